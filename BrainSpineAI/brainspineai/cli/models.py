"""``brainspineai models`` (the catalogue) and ``brainspineai dataset-summary``."""
from __future__ import annotations

import json

def cmd_models(args) -> int:
    from ..catalogue import list_models, shadowed_models

    for card in list_models():
        acc = card.get("metrics", {}).get("validation", {}).get("accuracy")
        print(f"{card['id']:<40} {card['task']:<18} {', '.join(card['class_names'])}"
              + (f"  (validation accuracy {acc:.1%})" if acc is not None else "") + f"  {card['path']}")
    for entry in shadowed_models():
        print(f"note: {entry['path']} is shadowed and never used by id: it {entry['reason']}")
    return 0


def cmd_dataset_summary(args) -> int:
    from ..datasets import summarise, summary_text
    from ..io import atomic_write_text

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

