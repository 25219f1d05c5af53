"""``brainspineai models`` (the catalogue) and ``brainspineai dataset-summary``."""
from __future__ import annotations

import json

def cmd_models(args) -> int:
    from ..catalogue import list_models, shadowed_models
    from .validate import clean_message

    for card in list_models():
        # a card from the user's folder may hold anything: show it as text, never fail on it
        metrics = card.get("metrics")
        val = metrics.get("validation") if isinstance(metrics, dict) else None
        acc = val.get("accuracy") if isinstance(val, dict) else None
        names = card.get("class_names")
        names = ", ".join(map(str, names)) if isinstance(names, list) else str(names)
        line = (f"{str(card.get('id')):<40} {str(card.get('task')):<18} {names}"
                + (f"  (validation accuracy {acc:.1%})" if isinstance(acc, (int, float)) else "") + f"  {card.get('path')}")
        print(clean_message(line, total=2000))
    for entry in shadowed_models():
        print(clean_message(f"note: {entry['path']} is shadowed and never used by id: it {entry['reason']}", total=2000))
    return 0


def cmd_dataset_summary(args) -> int:
    from pathlib import Path

    from ..datasets import summarise, summary_text
    from ..errors import InputError
    from ..io import atomic_write_text
    from ..outputs import check_outputs

    check_outputs([("--json", args.json)], inputs=[args.data_dir])
    if not Path(args.data_dir).is_dir():
        raise InputError(f"{args.data_dir}: not a dataset folder" if Path(args.data_dir).exists()
                         else f"dataset folder not found: {args.data_dir}")
    doc = summarise(args.data_dir)
    if args.json:
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    print(summary_text(doc))
    return 0


def add_parsers(sub) -> None:
    m = sub.add_parser("models", help="list the models in the catalogue")
    m.set_defaults(func=cmd_models)


def add_dataset_summary_parser(sub) -> None:
    ds = sub.add_parser("dataset-summary", help="cases per class, sizes and problems (unreadable files, empty "
                                                "classes or labels, geometry mismatches) of a dataset folder")
    ds.add_argument("data_dir", help="ImageFolder root (2D slices) or volume dataset (BraTS layout or dataset.json)")
    ds.add_argument("--json", metavar="OUT", help="write the summary as JSON")
    ds.set_defaults(func=cmd_dataset_summary)

