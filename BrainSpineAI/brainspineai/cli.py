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


def cmd_train_classifier(args) -> int:
    from .training import TrainConfig, train_classifier

    cfg = TrainConfig(architecture=args.architecture, image_size=args.image_size, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction, seed=args.seed,
                      device=args.device, limit_per_class=args.limit_per_class, model_id=args.model_id or "",
                      keep=args.keep, skull_strip_p=args.skull_strip_p, extra_card={"description": args.description} if args.description else {})
    folder = train_classifier(args.data, args.out, cfg, resume=args.resume, progress=_event_sink(args.events))
    _report_model(folder)
    return 0


def _affcl_config(args):
    from .affcl import AFFCLConfig

    return AFFCLConfig(backbone=args.backbone, two_branch=not getattr(args, "single_branch", False),
                       fusion=args.fusion, crop_fraction=args.crop_fraction,
                       supcon_weight=args.supcon_weight, temperature=args.temperature, queue_size=args.queue_size,
                       aux_weight=args.aux_weight, image_size=args.image_size, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction, seed=args.seed,
                       device=args.device, limit_per_class=args.limit_per_class, skull_strip_p=args.skull_strip_p,
                       boxes=args.boxes or "", model_id=args.model_id or "",
                       extra_card={"description": args.description} if args.description else {})


def cmd_train_affcl(args) -> int:
    from .affcl import train_affcl

    folder = train_affcl(args.data, args.out, _affcl_config(args), resume=args.resume, progress=_event_sink(args.events))
    _report_model(folder)
    return 0


def cmd_ablation_affcl(args) -> int:
    from .affcl import run_ablation

    doc = run_ablation(args.data, args.out, _affcl_config(args), progress=_event_sink(args.events))
    from .affcl import ablation_markdown

    print(ablation_markdown(doc), end="")
    print(f"table written to {Path(args.out) / 'ablation.md'} and ablation.json")
    return 0


def cmd_train_simclr(args) -> int:
    from .simclr import SimCLRConfig, train_simclr

    cfg = SimCLRConfig(backbone=args.backbone, image_size=args.image_size, proj_dim=args.proj_dim,
                       temperature=args.temperature, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       val_fraction=args.val_fraction, seed=args.seed, device=args.device,
                       limit_per_class=args.limit_per_class, model_id=args.model_id or "",
                       extra_card={"description": args.description} if args.description else {})
    folder = train_simclr(args.data, args.out, cfg, resume=args.resume, progress=_event_sink(args.events))
    _report_model(folder)
    return 0


def _finetune_config(args):
    from .simclr import FinetuneConfig

    return FinetuneConfig(encoder=getattr(args, "encoder", None) or "", backbone=args.backbone,
                          image_size=args.image_size, head=args.head, freeze_encoder=args.freeze_encoder,
                          label_fraction=getattr(args, "label_fraction", 1.0), epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, val_fraction=args.val_fraction, seed=args.seed,
                          device=args.device, limit_per_class=args.limit_per_class, skull_strip_p=args.skull_strip_p,
                          model_id=args.model_id or "",
                          extra_card={"description": args.description} if args.description else {})


def cmd_train_finetune(args) -> int:
    from .simclr import train_finetune

    folder = train_finetune(args.data, args.out, _finetune_config(args), resume=args.resume,
                            progress=_event_sink(args.events))
    _report_model(folder)
    return 0


def cmd_ablation_label_efficiency(args) -> int:
    from .simclr import run_label_efficiency

    run_label_efficiency(args.data, args.out, args.encoder, _finetune_config(args), fractions=args.fractions,
                         progress=_event_sink(args.events))
    print((Path(args.out) / "label_efficiency.md").read_text(), end="")
    return 0


def cmd_evaluate(args) -> int:
    import numpy as np

    from .catalogue import load_model
    from .data import load_slice_batch, scan_image_folder
    from .io import atomic_write_bytes, atomic_write_text
    from .metrics import classification_metrics, embedding_png_bytes, probability_metrics, save_confusion_png
    from .training import predict_batches

    if args.bootstrap < 0:
        raise InputError(f"--bootstrap {args.bootstrap}: give 0 (no confidence intervals) or a positive number of resamples")
    if args.embedding_png and not args.embedding_png.lower().endswith(".png"):
        raise InputError(f"--embedding-png {args.embedding_png}: use a .png file")
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
    try:
        prob_metrics = probability_metrics(labels, probs, classes, n_bootstrap=args.bootstrap)
    except ValueError as exc:
        raise BrainSpineAIError(f"model '{model.id}' on {root}: {exc}") from None
    doc = {"model": model.id, "data": str(root), "split": args.split, **metrics, "probability_metrics": prob_metrics}
    embedding_png = None
    if args.embedding_png:
        from .embeddings import penultimate_features

        if len(labels) < 5:
            raise InputError(f"--embedding-png: an embedding needs at least 5 images; {root} gives {len(labels)}")
        features = penultimate_features(model.network, batch, model.device)
        embedding_png, _ = embedding_png_bytes(features, labels, classes, seed=0,
                                               title=f"t-SNE of {model.id} features, {root.name} ({len(labels)} images)")
    # all computed: now write
    if args.confusion_png:
        save_confusion_png(metrics["confusion_matrix"], classes, args.confusion_png, title=f"{model.id} on {root.name}")
    if embedding_png is not None:
        atomic_write_bytes(args.embedding_png, embedding_png)
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
    if embedding_png is not None:
        print(f"embedding (t-SNE of penultimate features): {args.embedding_png}")
    return 0


def _read_sequences(args, needed) -> tuple:
    """(sequence -> image for the sequences the model needs, sorted names of the extra ones given)."""
    from .io import read_image

    given = {s: getattr(args, s) for s in ("t1", "t1ce", "t2", "flair") if getattr(args, s)}
    for s in needed:
        if s not in given:
            raise InputError(f"missing sequence {s} (the model needs {', '.join(needed)})")
    return {s: read_image(given[s]) for s in needed}, sorted(set(given) - set(needed))


def cmd_segment(args) -> int:
    from .io import atomic_write_text, write_image_atomic
    from .seginference import load_segmenter, segment

    if not _suffix_ok(args.out, (".nii.gz", ".nii", ".nrrd", ".mha", ".seg.nrrd")):
        raise InputError(f"--out {args.out}: use a .nii.gz, .nii, .nrrd or .mha file")
    model = load_segmenter(args.model, args.device)
    images, extra = _read_sequences(args, model.sequences)
    jsonl = args.progress == "jsonl"
    if extra and not jsonl:
        print(f"note: ignoring {', '.join(extra)} (model '{model.id}' uses {', '.join(model.sequences)})", file=sys.stderr)
    progress = None
    if jsonl:
        progress = lambda f, m: _json_line({"event": "progress", "fraction": round(f, 3), "message": m})  # noqa: E731
        if extra:
            progress(0.0, f"ignoring {', '.join(extra)} (model uses {', '.join(model.sequences)})")
    res = segment(images, model, report=args.report, overlap=args.overlap, tta=args.tta, progress=progress)
    from .segdata import LABELS

    doc = {"model": model.id, "sequences": model.sequences, "reference": model.sequences[0],
           "labelmap": str(Path(args.out).resolve()), "labels": {str(k): v for k, v in LABELS.items()},
           "regions": res.regions(), "report": args.report or None, "seconds": res.seconds}
    write_image_atomic(res.labelmap, args.out)
    if args.json:
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    if jsonl:
        _json_line({"event": "done", "result": doc})
    else:
        print(f"model: {model.id}   reference: {model.sequences[0]}   {res.seconds:.1f} s")
        for r, v in doc["regions"].items():
            print(f"  {r}: {v['volume_ml']:.2f} ml ({v['voxels']} voxels)")
        print(f"labelmap (1 NCR, 2 ED, 4 ET): {args.out}")
    return 0


def cmd_train_segmenter(args) -> int:
    from .segtrain import SegTrainConfig, train_segmenter

    cfg = SegTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                         sequences=tuple(args.sequences), patch_size=args.patch_size, spacing=args.spacing,
                         val_cases=args.val_cases, samples_per_epoch=args.samples_per_epoch,
                         channels=tuple(args.channels), semantic=not args.no_semantic,
                         image_bridge=not args.no_image_bridge, text_gate=not args.no_text_gate,
                         attention=not args.no_attention, clip_model=args.clip_model, init_model=args.init_model or "",
                         model_id=args.model_id or "",
                         extra_card={"description": args.description} if args.description else {})
    folder = train_segmenter(args.data, args.out, cfg, resume=args.resume, progress=_event_sink(args.events))
    import os

    if os.environ.get("RANK", "0") == "0":
        card = json.loads((Path(folder) / "model.json").read_text())
        mean = card.get("metrics", {}).get("held_out", {}).get("mean")
        extra = (" ; held-out Dice " + ", ".join(f"{r} {v['dice']:.3f}" for r, v in mean.items())) if mean else ""
        print(f"segmenter written to {folder}{extra}")
    return 0


def cmd_evaluate_seg(args) -> int:
    from .io import atomic_write_text
    from .seginference import evaluate_cases, load_segmenter

    if not 0 <= args.overlap < 1:
        raise InputError(f"--overlap {args.overlap}: must be in [0, 1)")
    model = load_segmenter(args.model, args.device)
    doc = evaluate_cases(args.data_dir, model, overlap=args.overlap, tta=args.tta)
    if args.json:
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    print(f"model: {model.id}   data: {args.data_dir} ({len(doc['cases'])} cases)")
    print(f"  {'case':<28} " + " ".join(f"{r + ' Dice':>8} {r + ' HD95':>9}" for r in ("WT", "TC", "ET")))
    def fmt(m):
        return " ".join(f"{m[r]['dice']:8.3f} " + (f"{m[r]['hd95_mm']:9.2f}" if m[r]['hd95_mm'] is not None else f"{'n/a':>9}")
                        for r in ("WT", "TC", "ET"))
    for cid, m in doc["cases"].items():
        print(f"  {cid:<28} {fmt(m)}")
    print(f"  {'mean':<28} {fmt(doc['mean'])}   (HD95 in mm)")
    return 0


def cmd_models(args) -> int:
    from .catalogue import list_models

    for card in list_models():
        acc = card.get("metrics", {}).get("validation", {}).get("accuracy")
        print(f"{card['id']:<40} {card['task']:<18} {', '.join(card['class_names'])}"
              + (f"  (validation accuracy {acc:.1%})" if acc is not None else "") + f"  {card['path']}")
    return 0


def _backbones():
    from .backbones import BACKBONES

    return list(BACKBONES)


def _common_train_args(p, image_size: int, epochs: int, lr: float, batch_size: int = 32, resume: bool = True) -> None:
    from .device import DEVICE_CHOICES

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
        p.add_argument("--resume", action="store_true", help="continue from <out>.work/last.pt")


def _skull_strip_arg(p) -> None:
    p.add_argument("--skull-strip-p", type=float, default=0.5,
                   help="probability of showing a training slice with a simulated skull stripping (0 = never)")


def _affcl_args(p) -> None:
    p.add_argument("--backbone", default="resnet18-w32", choices=_backbones())
    p.add_argument("--fusion", choices=["aff", "iaff"], default="aff", help="attentional feature fusion or iterative AFF")
    p.add_argument("--crop-fraction", type=float, default=0.5, help="local crop side as a fraction of the slice")
    p.add_argument("--boxes", metavar="CSV", help="tumour boxes (figshare3/tumor_boxes.csv layout) for the local crop")
    p.add_argument("--supcon-weight", type=float, default=0.5, help="weight of the SupCon queue loss (0 = off)")
    p.add_argument("--temperature", type=float, default=0.1, help="SupCon temperature")
    p.add_argument("--queue-size", type=int, default=1024, help="labelled memory queue length (embeddings)")
    p.add_argument("--aux-weight", type=float, default=0.3, help="weight of the global branch's auxiliary cross-entropy")
    _skull_strip_arg(p)


def _finetune_args(p) -> None:
    p.add_argument("--backbone", default="resnet18-w32", choices=_backbones(), help="only without --encoder")
    p.add_argument("--head", choices=["linear", "mlp"], default="linear")
    p.add_argument("--freeze-encoder", action="store_true", help="train the head only")
    _skull_strip_arg(p)


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
    _common_train_args(tc, image_size=128, epochs=30, lr=2e-3)
    tc.add_argument("--architecture", default="resnet18-w32")
    tc.add_argument("--keep", choices=["last", "best"], default="last",
                    help="weights to keep: the last epoch (default; unbiased validation figure) or the best validation epoch")
    _skull_strip_arg(tc)
    tc.set_defaults(func=cmd_train_classifier)

    ta = tsub.add_parser("affcl", help="AFF-CL: global + local branches, attentional feature fusion, SupCon memory queue")
    _common_train_args(ta, image_size=128, epochs=30, lr=2e-3)
    _affcl_args(ta)
    ta.add_argument("--single-branch", action="store_true", help="no local branch / fusion (ablation)")
    ta.set_defaults(func=cmd_train_affcl)

    ts = tsub.add_parser("simclr", help="SSCLNet pre-training: SimCLR / NT-Xent on unlabelled slices -> encoder model")
    _common_train_args(ts, image_size=96, epochs=50, lr=2e-3, batch_size=64)
    ts.add_argument("--backbone", default="resnet18-w32", choices=_backbones(), help="encoder (ResNet-18 layout by default)")
    ts.add_argument("--proj-dim", type=int, default=128, help="projection head output size")
    ts.add_argument("--temperature", type=float, default=0.5, help="NT-Xent temperature")
    ts.set_defaults(func=cmd_train_simclr)

    tf = tsub.add_parser("finetune", help="SSCLNet fine-tuning: classifier from a SimCLR encoder on a fraction of labels")
    _common_train_args(tf, image_size=0, epochs=30, lr=2e-3)
    _finetune_args(tf)
    tf.add_argument("--encoder", help="SimCLR encoder model id / folder / URL (omit: random initialisation)")
    tf.add_argument("--label-fraction", type=float, default=1.0, help="fraction of the training labels used, e.g. 0.1")
    tf.set_defaults(func=cmd_train_finetune)

    ab = sub.add_parser("ablation", help="train several variants on one split and seed and write one table")
    absub = ab.add_subparsers(dest="study", required=True)
    aa = absub.add_parser("affcl", help="cross-entropy vs +SupCon queue vs +AFF two-branch vs both")
    _common_train_args(aa, image_size=128, epochs=30, lr=2e-3, resume=False)
    _affcl_args(aa)
    aa.set_defaults(func=cmd_ablation_affcl)
    al = absub.add_parser("label-efficiency", help="fine-tuning with vs without SimCLR pre-training at several label fractions")
    _common_train_args(al, image_size=0, epochs=30, lr=2e-3, resume=False)
    _finetune_args(al)
    al.add_argument("--encoder", required=True, help="SimCLR encoder model id / folder / URL")
    al.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 1.0], help="label fractions")
    al.set_defaults(func=cmd_ablation_label_efficiency)

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
    e.add_argument("--embedding-png", metavar="OUT",
                   help="write a t-SNE plot of the penultimate-layer features, coloured by class, as a PNG")
    e.set_defaults(func=cmd_evaluate)

    sg = sub.add_parser("segment", help="3D brain tumour segmentation (WT / TC / ET) -> BraTS labelmap")
    for seq in ("t1", "t1ce", "t2", "flair"):
        sg.add_argument(f"--{seq}", metavar="PATH", help=f"{seq} volume (NIfTI / NRRD / MHA / DICOM folder)")
    sg.add_argument("--report", metavar="TEXT", help="report text guiding the semantic level (default: per-region descriptions)")
    sg.add_argument("--out", required=True, help="labelmap to write (.nii.gz), on the grid of the model's first sequence")
    sg.add_argument("--model", help="segmenter id, folder or URL (default: the shipped FLAIR + T1ce model)")
    sg.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    sg.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap in [0, 1)")
    sg.add_argument("--tta", action="store_true", help="flip test-time augmentation (4 passes)")
    sg.add_argument("--json", metavar="OUT", help="write the result as JSON")
    sg.add_argument("--progress", choices=["text", "jsonl"], default="text",
                    help="jsonl: progress and result as JSON lines on stdout (for 3D Slicer)")
    sg.set_defaults(func=cmd_segment)

    tg = tsub.add_parser("segmenter", help="CLIP-guided 3D U-Net on BraTS-layout cases (leave-cases-out)")
    tg.add_argument("--data", required=True, help="BraTS 2015/2020/2023 case folders or a dataset.json root")
    tg.add_argument("--out", required=True, help="model folder to write")
    tg.add_argument("--sequences", nargs="+", default=["flair", "t1ce"], help="input sequences; the first is the reference grid")
    tg.add_argument("--epochs", type=int, default=30)
    tg.add_argument("--patch-size", type=int, default=48, help="training patch / sliding window side in voxels")
    tg.add_argument("--spacing", type=float, default=2.0, help="model voxel size in mm (isotropic)")
    tg.add_argument("--batch-size", type=int, default=2, help="patches per step, per process")
    tg.add_argument("--samples-per-epoch", type=int, default=0, help="patches per epoch (0: 8 per training case)")
    tg.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    tg.add_argument("--seed", type=int, default=0)
    tg.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    tg.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128], help="U-Net feature channels per level")
    tg.add_argument("--clip-model", default="small-random",
                    help="small-random (local, no download), ARCH/TAG, ARCH/LOCAL_CHECKPOINT or hf-hub:NAME")
    tg.add_argument("--no-semantic", action="store_true", help="no CLIP level at all (plain attention residual U-Net)")
    tg.add_argument("--no-text-gate", action="store_true")
    tg.add_argument("--no-image-bridge", action="store_true")
    tg.add_argument("--no-attention", action="store_true", help="no semantic spatial attention on TC / ET")
    tg.add_argument("--val-cases", type=int, default=1, help="last N cases (sorted by id) held out for the card's metrics")
    tg.add_argument("--init-model", metavar="ID|DIR", help="fine-tune from this segmenter (version + 1, parent recorded)")
    tg.add_argument("--resume", action="store_true", help="continue from <out>.work/last.pt")
    tg.add_argument("--events", metavar="FILE", help="append progress events as JSON lines to FILE ('-' = stdout)")
    tg.add_argument("--model-id", help="id in the model card (default: the --out folder name)")
    tg.add_argument("--description", help="one-line description for the model card")
    tg.set_defaults(func=cmd_train_segmenter)

    es = sub.add_parser("evaluate-seg", help="Dice and HD95 (mm) per region per case of a segmenter")
    es.add_argument("data_dir", help="labelled cases (BraTS layouts or dataset.json)")
    es.add_argument("--model", help="segmenter id, folder or URL (default: the shipped one)")
    es.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    es.add_argument("--overlap", type=float, default=0.5)
    es.add_argument("--tta", action="store_true")
    es.add_argument("--json", metavar="OUT", help="write the metrics as JSON")
    es.set_defaults(func=cmd_evaluate_seg)

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
