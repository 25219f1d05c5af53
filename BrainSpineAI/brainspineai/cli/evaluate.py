"""``brainspineai evaluate``: a classifier's accuracy, per-class figures, confusion matrix,
AUC / sensitivity / specificity with bootstrap intervals, and an embedding plot."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import BrainSpineAIError, InputError
from .sicf import add_trust_pickle_arg, load_model_trusting


def cmd_evaluate(args) -> int:
    import numpy as np

    from ..classification.data import load_slice_batch, scan_image_folder
    from ..io import atomic_write_bytes, atomic_write_text
    from ..metrics import classification_metrics, embedding_png_bytes, probability_metrics, save_confusion_png
    from ..classification.predict import predict_batches
    from ..outputs import check_outputs
    from .validate import guarded_load

    if args.bootstrap < 0:
        raise InputError(f"--bootstrap {args.bootstrap}: give 0 (no confidence intervals) or a positive number of resamples")
    for opt, path in (("--embedding-png", args.embedding_png), ("--confusion-png", args.confusion_png),
                      ("--reliability-png", args.reliability_png)):
        if path and not path.lower().endswith(".png"):
            raise InputError(f"{opt} {path}: use a .png file")
    check_outputs([("--json", args.json), ("--confusion-png", args.confusion_png), ("--embedding-png", args.embedding_png),
                   ("--reliability-png", args.reliability_png)],
                  inputs=[args.data_dir, args.split, args.model, args.localisation])
    if not Path(args.data_dir).is_dir():
        raise InputError(f"dataset folder not found: {args.data_dir}" if not Path(args.data_dir).exists()
                         else f"{args.data_dir}: not a folder (give an ImageFolder root: ROOT/<class>/<image>)")
    if args.localisation and not Path(args.localisation).exists():
        raise InputError(f"--localisation {args.localisation}: not found (give tumor_boxes.csv or a folder of labelled volumes)")
    wanted = read_split(args.split) if args.split else None
    model = guarded_load(args.model, load_model_trusting, args)  # --trust-pickle: legacy SICF forests
    if getattr(model, "kind", "") == "sicf":
        from . import sicf as cli_sicf

        return cli_sicf.evaluate(args, model)
    paths, labels, classes = scan_image_folder(args.data_dir, model.class_names)
    root = Path(args.data_dir)
    if args.split:
        keep = [i for i, p in enumerate(paths) if p.relative_to(root).as_posix() in wanted]
        if not keep:
            raise InputError(f"--split {args.split}: none of its validation images is in {root}")
        paths, labels = [paths[i] for i in keep], labels[keep]
    from ..classification.preprocess import crop_mode

    batch = load_slice_batch(paths, model.input_size, crop=crop_mode(model.card, volume=False))
    raw = predict_batches(model.network, batch, model.device)
    probs, calibration = _calibrate(model.card, raw, labels)
    metrics = classification_metrics(labels, probs.argmax(1), classes)
    try:
        prob_metrics = probability_metrics(labels, probs, classes, n_bootstrap=args.bootstrap)
    except ValueError as exc:
        raise BrainSpineAIError(f"model '{model.id}' on {root}: {exc}") from None
    doc = {"model": model.id, "data": str(root), "split": args.split, **metrics, "probability_metrics": prob_metrics,
           "ece": calibration,
           "predictions": [{"file": p.relative_to(root).as_posix(), "true": classes[int(t)], "predicted": classes[int(q.argmax())],
                            "probabilities": {c: round(float(v), 6) for c, v in zip(classes, q)}}
                           for p, t, q in zip(paths, labels, probs)]}
    reliability_png = None
    if args.reliability_png:
        from ..classification.calibration import reliability_png_bytes

        reliability_png = reliability_png_bytes(raw, probs if calibration["temperature"] != 1.0 else None, labels,
                                                f"{model.id} on {root.name} ({len(labels)} images)")
    embedding_png = None
    if args.embedding_png:
        from ..classification.embeddings import penultimate_features

        if len(labels) < 5:
            raise InputError(f"--embedding-png: an embedding needs at least 5 images; {root} gives {len(labels)}")
        features = penultimate_features(model.network, batch, model.device)
        embedding_png, _ = embedding_png_bytes(features, labels, classes, seed=0,
                                               title=f"t-SNE of {model.id} features, {root.name} ({len(labels)} images)")
    # all computed: now write
    if args.confusion_png:
        save_confusion_png(metrics["confusion_matrix"], classes, args.confusion_png, title=f"{model.id} on {root.name}")
    if args.localisation:
        from ..classification.localisation import localisation_report

        doc["localisation"] = localisation_report(model, args.localisation)
    if embedding_png is not None:
        atomic_write_bytes(args.embedding_png, embedding_png)
    if reliability_png is not None:
        atomic_write_bytes(args.reliability_png, reliability_png)
    if args.json:
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    print(f"model: {model.id}   data: {root} ({metrics['n']} images)")
    print(f"accuracy: {metrics['accuracy']:.2%}   macro F1: {metrics['macro_f1']:.3f}")
    print(f"  {'class':<12} {'precision':>9} {'recall':>7} {'F1':>6} {'n':>5}")
    for name, m in metrics["per_class"].items():
        print(f"  {name:<12} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1']:6.3f} {m['support']:5d}")
    print("confusion matrix (rows true, columns predicted): " + json.dumps(np.asarray(metrics["confusion_matrix"]).tolist()))
    def ci_text(stat) -> str:  # "0.987 [0.970, 0.996]"
        if stat["value"] is None:
            return "n/a"
        ci = stat["ci95"]
        return f"{stat['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    pm = prob_metrics
    ci_note = (f"95% percentile bootstrap CI, {pm['n_bootstrap']} resamples" if pm["n_bootstrap"] else "no confidence intervals")
    print(f"macro AUC (one-vs-rest): {ci_text(pm['macro_auc'])}   accuracy: {ci_text(pm['accuracy'])}   ({ci_note})")
    print(f"  {'class':<12} {'AUC':<22} {'sensitivity':<22} {'specificity':<22}")
    for name, m in pm["per_class"].items():
        print(f"  {name:<12} {ci_text(m['auc']):<22} {ci_text(m['sensitivity']):<22} {ci_text(m['specificity']):<22}")
    for seq, g in doc.get("localisation", {}).get("groups", {}).items():
        loc = doc["localisation"]
        sides = "+".join(map(str, loc.get("input_sizes", [])))
        if loc.get("slice_sigma"):
            sides += f", smoothed across slices (sigma {loc['slice_sigma']:g})"
        ci = g.get("pointing_ci95")
        ci = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
        print(f"localisation ({loc['method']}@{loc['layer']}, {sides} px, {seq}, {g['n']} tumour slices): pointing game "
              f"{g['pointing']:.3f}{ci}, energy in tumour {g['energy_in_tumour']:.3f}, "
              f"heat outside head {g['heat_outside_head']:.3f}")
    ece = calibration
    print(f"expected calibration error (15 bins): {ece['before']:.4f} uncalibrated" +
          (f", {ece['after']:.4f} at the card's temperature {ece['temperature']:g}" if ece["after"] is not None
           else " (the card has no temperature)"))
    if reliability_png is not None:
        print(f"reliability diagram: {args.reliability_png}")
    if embedding_png is not None:
        print(f"embedding (t-SNE of penultimate features): {args.embedding_png}")
    return 0


def _calibrate(card: dict, raw, labels) -> tuple:
    """(probabilities at the card's temperature, ``{"bins", "before", "after", "temperature"}``):
    the expected calibration error of the raw softmax and of the calibrated one (``None``
    when the card has no temperature)."""
    from ..classification.calibration import N_BINS, apply_temperature, card_temperature, expected_calibration_error

    t = card_temperature(card)
    probs = apply_temperature(raw, t)
    return probs, {"bins": N_BINS, "temperature": t, "before": round(expected_calibration_error(raw, labels), 4),
                   "after": round(expected_calibration_error(probs, labels), 4) if t != 1.0 else None}


def read_split(path) -> set:
    """The ``validation`` list of a training ``split.json`` as a set of relative paths.

    :raises InputError: unreadable file, invalid JSON, not an object, or no list of strings
        under ``validation``."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"--split {path}: cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputError(f"--split {path}: not valid JSON ({exc})") from None
    val = doc.get("validation") if isinstance(doc, dict) else None
    if not isinstance(val, list) or not val or not all(isinstance(v, str) for v in val):
        raise InputError(f"--split {path}: not a split file (needs a non-empty 'validation' list of relative image paths)")
    return set(val)


def add_parser(sub) -> None:
    from ..device import DEVICE_CHOICES

    e = sub.add_parser("evaluate", help="accuracy, per-class precision / recall / F1, confusion matrix, "
                                        "AUC, sensitivity and specificity with bootstrap CIs")
    e.add_argument("data_dir", help="ImageFolder root with class folders named as the model's classes")
    e.add_argument("--model", help="model id, folder or URL (default: the shipped model)")
    e.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    e.add_argument("--split", metavar="SPLIT_JSON", help="evaluate only the 'validation' images listed in a training split.json")
    e.add_argument("--json", metavar="OUT", help="write the metrics as JSON (top-level 'accuracy')")
    e.add_argument("--confusion-png", metavar="OUT", help="write the confusion matrix as a PNG")
    e.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the 95%% confidence intervals of AUC, sensitivity and specificity "
                        "(0: point values only)")
    e.add_argument("--reliability-png", metavar="OUT",
                   help="write a reliability diagram (accuracy against confidence, 15 bins, before / after "
                        "temperature scaling) as a PNG")
    e.add_argument("--embedding-png", metavar="OUT",
                   help="write a t-SNE plot of the penultimate-layer features, coloured by class, as a PNG")
    e.add_argument("--localisation", metavar="SOURCE",
                   help="also measure the heatmaps' localisation (pointing game, energy in tumour, heat outside "
                        "the head) on a tumor_boxes.csv or a folder of BraTS / TCGA-LGG labelled volumes")
    add_trust_pickle_arg(e)
    e.set_defaults(func=cmd_evaluate)

