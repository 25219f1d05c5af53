"""What every command group shares: JSON-line output, progress event sinks, the report of a
written model, and the options every training pipeline takes."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError

HEATMAP_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def _json_line(obj) -> None:
    print(json.dumps(obj), flush=True)


def _suffix_ok(path: str, suffixes) -> bool:
    return any(path.lower().endswith(s) for s in suffixes)


def _event_sink(path):
    """Progress events as JSON lines: to stdout for '-', appended to a file otherwise."""
    import os

    if not path or os.environ.get("RANK", "0") != "0":  # under torchrun only process 0 reports
        return None
    if path == "-":
        return _json_line
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"--events {path}: cannot write there ({exc.strerror})") from None

    def sink(event, fh=fh):
        fh.write(json.dumps(event) + "\n")
        fh.flush()
    return sink


def _report_model(folder) -> None:
    import os

    if os.environ.get("RANK", "0") != "0":  # under torchrun process 0 writes and reports the model
        return
    card = json.loads((Path(folder) / "model.json").read_text())
    val = card.get("metrics", {}).get("validation")
    if val:
        print(f"model written to {folder}; validation accuracy {val['accuracy']:.2%} on "
              f"{card['training_data']['n_validation']} held-out images")
    else:
        mon = card.get("metrics", {}).get("monitor", {})
        extra = f"; k-NN accuracy of the representation on held-out images {mon['knn_val_accuracy']:.2%}" \
            if "knn_val_accuracy" in mon else ""
        print(f"encoder written to {folder}{extra}")


# the names of brainspineai.classification.backbones.BACKBONES, spelled out so that building the
# parser does not import torch (test_cli_fast.py checks that both lists agree)
BACKBONE_NAMES = ("resnet18-w32", "resnet18", "resnet10-w32", "mobilenet_v3_small", "efficientnet_b0", "vit-tiny")


def _backbones():
    return list(BACKBONE_NAMES)


def _common_train_args(p, image_size: int, epochs: int, lr: float, batch_size: int = 32, resume: bool = True) -> None:
    from ..device import DEVICE_CHOICES

    p.add_argument("--data", required=True, help="ImageFolder root: one folder of 2D slices per class")
    p.add_argument("--out", required=True, help="model folder (or, for an ablation, results folder) to write")
    p.add_argument("--image-size", type=int, default=image_size,
                   help="input side in pixels" + (" (0: the encoder's)" if image_size == 0 else ""))
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size, help="per process")
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate (one-cycle)")
    p.add_argument("--val-fraction", type=float, default=0.15, help="held-out validation fraction per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--limit-per-class", type=int, default=0, help="use at most N images per class (quick runs)")
    p.add_argument("--model-id", help="id in the model card (default: the --out folder name)")
    p.add_argument("--description", help="one-line description for the model card")
    p.add_argument("--events", metavar="FILE", help="append progress events as JSON lines to FILE ('-' = stdout)")
    if resume:
        _overwrite_arg(p)
        p.add_argument("--resume", action="store_true", help="continue from <out>.work/last.pt")
        p.add_argument("--init-model", metavar="ID|DIR",
                       help="retrain: start from this model's weights (same classes); the result is its next "
                            "version (id <id>-v<N> unless --model-id)")


def _overwrite_arg(p) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing model folder at --out (never a file or any other folder)")


def _check_train_out(args) -> None:
    """Refuse an --out that is not a new, empty or (with --overwrite) model folder, before any
    work (see :func:`brainspineai.catalogue.check_out_dir`)."""
    from ..catalogue import check_out_dir

    from ..checkpoint import work_dir

    model_id = getattr(args, "model_id", None) or ("" if getattr(args, "init_model", None) else None)
    # --resume continues the run that writes this folder: its model may be replaced
    resuming = bool(getattr(args, "resume", False)) and (work_dir(args.out) / "last.pt").is_file()
    check_out_dir(args.out, args.overwrite or resuming, model_id=model_id)


def _skull_strip_arg(p) -> None:
    p.add_argument("--skull-strip-p", type=float, default=0.5,
                   help="probability of showing a training slice with a simulated skull stripping (0 = never)")
