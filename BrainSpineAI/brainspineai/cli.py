"""The ``brainspineai`` command: every job of the library, headless.

Exit status: 0 on success, 2 when the input, the model or the options are at fault (one
line ``brainspineai: error: ...`` on stderr, and no output file written), 1 for an
unexpected failure. Outputs are written only after the whole job succeeded, each
atomically (temporary file, then rename).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import BrainSpineAIError, InputError

HEATMAP_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def _json_line(obj) -> None:
    print(json.dumps(obj), flush=True)


def _suffix_ok(path: str, suffixes) -> bool:
    return any(path.lower().endswith(s) for s in suffixes)


def cmd_classify(args) -> int:
    from .catalogue import load_model
    from .explain import overlay_png
    from .io import atomic_write_bytes, atomic_write_text, is_slice, read_image, write_image_atomic
    from .inference import classify_image
    from .preprocess import slice_array

    image = read_image(args.input)
    slice_input = is_slice(image)
    if args.heatmap:
        if slice_input and not args.heatmap.lower().endswith(".png") and not _suffix_ok(args.heatmap, HEATMAP_VOLUME_SUFFIXES):
            raise InputError(f"--heatmap {args.heatmap}: use a .png file (overlay) or a volume file for a 2D input")
        if not slice_input and not _suffix_ok(args.heatmap, HEATMAP_VOLUME_SUFFIXES):
            raise InputError(f"--heatmap {args.heatmap}: a volume's heatmap is a volume; use .nii.gz, .nii, .nrrd or .mha")
    model = load_model(args.model, args.device)
    progress = None
    if args.progress == "jsonl":
        progress = lambda f, m: _json_line({"event": "progress", "fraction": round(f, 3), "message": m})  # noqa: E731
    result = classify_image(image, model, heatmap=bool(args.heatmap), heatmap_class=args.heatmap_class, progress=progress)
    doc = result.to_json()
    # all computed: now write
    if args.heatmap:
        if args.heatmap.lower().endswith(".png"):
            atomic_write_bytes(args.heatmap, overlay_png(slice_array(image), slice_array(result.heatmap)))
        else:
            write_image_atomic(result.heatmap, args.heatmap)
    if args.json:
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    if args.progress == "jsonl":
        _json_line({"event": "done", "result": doc})
    else:
        order = sorted(range(len(doc["classes"])), key=lambda i: -doc["probabilities"][i])
        p_pred = doc["probabilities"][doc["classes"].index(doc["predicted"])]
        print(f"model: {doc['model']}")
        kind = "2D slice" if slice_input else f"volume, {len(doc['slices'])} slices classified"
        print(f"input: {args.input} ({kind})")
        print(f"predicted: {doc['predicted']} ({p_pred:.1%})")
        for i in order:
            print(f"  {doc['classes'][i]:<12} {doc['probabilities'][i]:7.2%}")
        if not slice_input:
            print(f"volume rule: {doc['volume_rule']}")
        if args.heatmap:
            print(f"heatmap ({result.heatmap_class}): {args.heatmap}")
    return 0


def cmd_train_classifier(args) -> int:
    from .training import TrainConfig, train_classifier

    cfg = TrainConfig(architecture=args.architecture, image_size=args.image_size, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction, seed=args.seed,
                      device=args.device, limit_per_class=args.limit_per_class, model_id=args.model_id or "",
                      keep=args.keep, skull_strip_p=args.skull_strip_p, extra_card={"description": args.description} if args.description else {})
    sink = None
    if args.events:
        if args.events == "-":
            sink = _json_line
        else:
            fh = open(args.events, "a", encoding="utf-8")

            def sink(event, fh=fh):
                fh.write(json.dumps(event) + "\n")
                fh.flush()
    folder = train_classifier(args.data, args.out, cfg, resume=args.resume, progress=sink)
    card = json.loads((Path(folder) / "model.json").read_text())
    acc = card["metrics"]["validation"]["accuracy"]
    print(f"model written to {folder}; validation accuracy {acc:.2%} on {card['training_data']['n_validation']} held-out images")
    return 0


def cmd_evaluate(args) -> int:
    import numpy as np

    from .catalogue import load_model
    from .data import load_slice_batch, scan_image_folder
    from .io import atomic_write_text
    from .metrics import classification_metrics, save_confusion_png
    from .training import predict_batches

    model = load_model(args.model, args.device)
    paths, labels, classes = scan_image_folder(args.data_dir, model.class_names)
    root = Path(args.data_dir)
    if args.split:
        try:
            split = json.loads(Path(args.split).read_text())
            wanted = set(split["validation"])
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"--split {args.split}: not a split file with a 'validation' list ({exc})") from None
        keep = [i for i, p in enumerate(paths) if str(p.relative_to(root)) in wanted]
        if not keep:
            raise InputError(f"--split {args.split}: none of its validation images is in {root}")
        paths, labels = [paths[i] for i in keep], labels[keep]
    from .preprocess import crop_mode

    batch = load_slice_batch(paths, model.input_size, crop=crop_mode(model.card, volume=False))
    probs = predict_batches(model.network, batch, model.device)
    metrics = classification_metrics(labels, probs.argmax(1), classes)
    doc = {"model": model.id, "data": str(root), "split": args.split, **metrics}
    if args.confusion_png:
        save_confusion_png(metrics["confusion_matrix"], classes, args.confusion_png, title=f"{model.id} on {root.name}")
    if args.json:
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    print(f"model: {model.id}   data: {root} ({metrics['n']} images)")
    print(f"accuracy: {metrics['accuracy']:.2%}   macro F1: {metrics['macro_f1']:.3f}")
    print(f"  {'class':<12} {'precision':>9} {'recall':>7} {'F1':>6} {'n':>5}")
    for name, m in metrics["per_class"].items():
        print(f"  {name:<12} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1']:6.3f} {m['support']:5d}")
    print("confusion matrix (rows true, columns predicted): " + json.dumps(np.asarray(metrics["confusion_matrix"]).tolist()))
    return 0


def cmd_models(args) -> int:
    from .catalogue import list_models

    for card in list_models():
        acc = card.get("metrics", {}).get("validation", {}).get("accuracy")
        print(f"{card['id']:<40} {card['task']:<18} {', '.join(card['class_names'])}"
              + (f"  (validation accuracy {acc:.1%})" if acc is not None else "") + f"  {card['path']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .device import DEVICE_CHOICES

    p = argparse.ArgumentParser(prog="brainspineai", description="Tumour AI for brain and spine MRI (research use only).")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("classify", help="classify a 2D slice or a 3D volume, optionally with a Grad-CAM heatmap")
    c.add_argument("input", help="NIfTI / NRRD / MHA file, DICOM series folder, or JPEG / PNG slice")
    c.add_argument("--model", help="model id, model folder or URL (default: the shipped 4-class model)")
    c.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    c.add_argument("--heatmap", metavar="OUT", help="Grad-CAM output: NIfTI/NRRD/MHA for volumes, PNG overlay for 2D")
    c.add_argument("--heatmap-class", metavar="CLASS", help="class to explain (default: the predicted class)")
    c.add_argument("--json", metavar="OUT", help="write the result as JSON")
    c.add_argument("--progress", choices=["text", "jsonl"], default="text",
                   help="jsonl: progress and result as JSON lines on stdout (for 3D Slicer)")
    c.set_defaults(func=cmd_classify)

    t = sub.add_parser("train", help="train a model")
    tsub = t.add_subparsers(dest="pipeline", required=True)
    tc = tsub.add_parser("classifier", help="supervised 2D classifier (cross-entropy) on an ImageFolder dataset")
    tc.add_argument("--data", required=True, help="ImageFolder root: one folder of slices per class")
    tc.add_argument("--out", required=True, help="model folder to write")
    tc.add_argument("--architecture", default="resnet18-w32")
    tc.add_argument("--image-size", type=int, default=128, help="input side in pixels")
    tc.add_argument("--epochs", type=int, default=30)
    tc.add_argument("--batch-size", type=int, default=32)
    tc.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle)")
    tc.add_argument("--val-fraction", type=float, default=0.15, help="held-out validation fraction per class")
    tc.add_argument("--seed", type=int, default=0)
    tc.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    tc.add_argument("--limit-per-class", type=int, default=0, help="use at most N images per class (quick runs)")
    tc.add_argument("--model-id", help="id in the model card (default: the --out folder name)")
    tc.add_argument("--description", help="one-line description for the model card")
    tc.add_argument("--keep", choices=["last", "best"], default="last",
                    help="weights to keep: the last epoch (default; unbiased validation figure) or the best validation epoch")
    tc.add_argument("--skull-strip-p", type=float, default=0.5,
                    help="probability of showing a training slice with a simulated skull stripping (0 = never)")
    tc.add_argument("--resume", action="store_true", help="continue from <out>.work/last.pt")
    tc.add_argument("--events", metavar="FILE", help="append progress events as JSON lines to FILE ('-' = stdout)")
    tc.set_defaults(func=cmd_train_classifier)

    e = sub.add_parser("evaluate", help="accuracy, per-class precision / recall / F1 and confusion matrix")
    e.add_argument("data_dir", help="ImageFolder root with class folders named as the model's classes")
    e.add_argument("--model", help="model id, folder or URL (default: the shipped model)")
    e.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    e.add_argument("--split", metavar="SPLIT_JSON", help="evaluate only the 'validation' images listed in a training split.json")
    e.add_argument("--json", metavar="OUT", help="write the metrics as JSON (top-level 'accuracy')")
    e.add_argument("--confusion-png", metavar="OUT", help="write the confusion matrix as a PNG")
    e.set_defaults(func=cmd_evaluate)

    m = sub.add_parser("models", help="list the models in the catalogue")
    m.set_defaults(func=cmd_models)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrainSpineAIError as exc:
        if args.debug:
            raise
        print(f"brainspineai: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("brainspineai: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
