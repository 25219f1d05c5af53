"""SICF (LO-RF) training: SIFT + VGG16 feature fusion, Lyrebird-optimised feature selection
and a random forest, for 2D slices; and the paper's ablation.

Source: Shi et al., "An intelligent MRI data fusion framework for optimized diagnosis of
spinal tumors", Front. Med. 2025. Pipeline per slice, one module per part:

1-5. ROI (:mod:`.roi`), histogram-equalised ROI, SIFT bag of visual words, VGG16 fc7 and
     their fusion into 512 + 4096 = 4608 features (:mod:`.features`).
6. Feature selection: the Lyrebird Optimization Algorithm (Dehghani et al., Biomimetics
   8(6):507, 2023) as a binary wrapper (:mod:`.lyrebird`): positions in ``[-4, 4]^D`` map to
   a mask through the sigmoid transfer ``sigmoid(x) > 0.5``; fitness = 5-fold stratified
   cross-validated random-forest accuracy on the training slices minus ``penalty`` x the
   fraction of features kept.
7. Random forest (scikit-learn): 100 trees, max depth 20, Gini, balanced class weights, and
   the metrics with bootstrap intervals (:mod:`.forest`).

The model folder (task ``sicf-2d``) is described in :mod:`.model`; classification of slices
and volumes is in :mod:`.inference`.

Retraining (``init_model``, see :mod:`brainspineai.retrain`): the parent's SIFT codebook,
feature mask (unless ``reselect``) and VGG16 weights (rebuilt from the card's provenance
and fingerprint) are reused, so the features mean the same; only the random forest is
refitted on the grown training set, the parent's validation images stay held out, and the
card records ``version``, ``parent``, ``lineage`` and ``parent_sha256``.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from .config import SICFConfig, with_defaults
from .features import block_mask, cnn_features, extract_features, fit_codebook, fused_matrix
from .forest import make_forest, sicf_metrics
from .lyrebird import select_features
from .model import TASK, load_sicf_parent, save_sicf_model

__all__ = ["ABLATION_VARIANTS", "SICFConfig", "ablation_markdown", "run_ablation", "train_sicf"]

ABLATION_VARIANTS = {  # name: (feature blocks, LOA selection)
    "SIFT->RF": (("sift",), False),
    "VGG16->RF": (("vgg",), False),
    "SIFT+VGG16->RF": (("sift", "vgg"), False),
    "VGG16->LO-RF": (("vgg",), True),
    "SIFT+VGG16->LO-RF": (("sift", "vgg"), True),
}


def _prepare_data(data_dir, cfg: SICFConfig, progress=None):
    from ..classification.data import limit_per_class_subset, scan_image_folder, stratified_split
    from ..retrain import keep_parent_split

    root = Path(data_dir)
    paths, labels, class_names = scan_image_folder(root)
    if len(class_names) < 2:
        raise InputError(f"{root}: need at least two class folders, found {len(class_names)}")
    parent = pmodel = None
    if cfg.init_model:
        parent, pmodel, cfg = load_sicf_parent(cfg, class_names)
    else:
        cfg = with_defaults(cfg)
    cfg.check()
    paths, labels = limit_per_class_subset(paths, labels, cfg.limit_per_class, cfg.seed)
    tr, va = stratified_split(labels, cfg.val_fraction, cfg.seed)
    tr, va, n_kept = keep_parent_split(parent, paths, root, tr, va)
    for c, name in enumerate(class_names):
        if not np.any(labels[tr] == c) or not np.any(labels[va] == c):
            raise InputError(f"{root}: class '{name}' has too few images for a training and a validation split")
    vgg = pmodel.vgg if pmodel is not None else cnn_features(cfg.cnn, cfg.vgg_weights, seed=cfg.seed)
    if progress:
        progress({"event": "data", "pipeline": "sicf", "n_train": len(tr), "n_val": len(va), "classes": class_names,
                  "vgg16": vgg.provenance["source"], **({"parent": parent.id, "parent_validation_kept": n_kept}
                                                        if parent else {})})
    t0 = time.time()
    feats = extract_features(paths, cfg, vgg, progress=progress)
    t_feat = time.time() - t0
    t0 = time.time()
    if pmodel is not None:  # the parent's visual words: its feature mask keeps its meaning
        codebook = pmodel.codebook
    else:
        codebook = fit_codebook([feats["descriptors"][i] for i in tr], cfg.n_words, cfg.seed)
    t_code = time.time() - t0
    fused = fused_matrix(feats, codebook)
    ctx = {"cfg": cfg, "parent": parent, "parent_model": pmodel, "parent_validation_kept": n_kept}
    return root, paths, labels, class_names, tr, va, vgg, feats, codebook, fused, {"features_s": round(t_feat, 2),
                                                                                   "codebook_s": round(t_code, 2)}, ctx


def _fit_variant(fused, labels, tr, va, class_names, cfg: SICFConfig, progress=None, mask=None):
    cand = block_mask(cfg.n_words, cfg.blocks, fused.shape[1] - cfg.n_words)
    t0 = time.time()
    if mask is not None:  # a retrained model keeping its parent's selection
        mask, sel = np.asarray(mask, bool), None
    elif cfg.select:
        mask, sel = select_features(fused[tr], labels[tr], cfg.population, cfg.iterations, cfg.penalty,
                                    cfg.cv_folds, cfg.seed, candidates=cand, progress=progress)
    else:
        mask, sel = cand, None
    t_sel = time.time() - t0
    t0 = time.time()
    forest = make_forest(cfg.seed).fit(fused[tr][:, mask], labels[tr])
    t_fit = time.time() - t0
    probs = np.zeros((len(va), len(class_names)))
    probs[:, forest.classes_] = forest.predict_proba(fused[va][:, mask])
    metrics = sicf_metrics(labels[va], probs, class_names, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    return forest, mask, sel, metrics, {"selection_s": round(t_sel, 2), "forest_fit_s": round(t_fit, 2)}


def _card(cfg, root, paths, labels, tr, va, class_names, vgg, codebook, mask, sel, metrics, timing, out_dir) -> dict:
    return {
        "id": cfg.model_id or Path(out_dir).name, "version": 1, "task": TASK, "architecture": "sicf-lorf",
        "method": "SICF (Shi et al., Front. Med. 2025): SIFT BoVW + VGG16 fc7 fusion, Lyrebird-optimised RF",
        "class_names": class_names, "input_size": [cfg.image_size, cfg.image_size], "in_channels": 1,
        "roi": cfg.roi, "n_words": int(codebook.shape[0]), "feature_blocks": list(cfg.blocks),
        "n_features": int(len(mask)), "n_features_kept": int(mask.sum()),
        "selection": ({"method": "LOA (Dehghani et al. 2023), binary sigmoid transfer", "population": cfg.population,
                       "iterations": cfg.iterations, "penalty": cfg.penalty, "cv_folds": cfg.cv_folds, **sel}
                      if sel else None),
        "forest": {"n_estimators": 100, "max_depth": 20, "criterion": "gini", "class_weight": "balanced",
                   "random_state": cfg.seed},
        "vgg16": vgg.provenance, "gradcam_layer": None,
        "training_data": {"folder": root.name, "n_train": int(len(tr)), "n_validation": int(len(va)),
                          "limit_per_class": cfg.limit_per_class, "val_fraction": cfg.val_fraction, "seed": cfg.seed},
        "metrics": {"validation": {"accuracy": metrics["accuracy"]["value"], **{k: metrics[k] for k in
                                   ("sensitivity", "specificity", "auc", "f1")},
                                   "accuracy_ci95": metrics["accuracy"]["ci95"], "n": metrics["n"]}},
        "timing_s": timing, **cfg.extra_card,
    }


def _split_json(root, paths, tr, va, class_names) -> str:
    return json.dumps({"data_folder": root.name, "class_names": class_names,
                       "validation": [str(Path(paths[i]).relative_to(root)) for i in va],
                       "train": [str(Path(paths[i]).relative_to(root)) for i in tr]}, indent=2) + "\n"


def train_sicf(data_dir, out_dir, cfg: SICFConfig, progress=None) -> Path:
    """Train an SICF model on an ImageFolder dataset (stratified split ``val_fraction``) and
    write its model folder (see the module text); the card's ``metrics.validation`` holds
    :func:`sicf_metrics` on the held-out slices.

    With ``cfg.init_model`` the run retrains that SICF model (:func:`load_sicf_parent`): its
    codebook, VGG16 and (unless ``cfg.reselect``) feature mask are reused, the forest is
    refitted, the parent's validation images stay held out
    (:func:`brainspineai.retrain.keep_parent_split`) and the card becomes the parent's next
    version (:func:`brainspineai.retrain.version_card`: id ``<id>-v<N>`` unless
    ``cfg.model_id``). The parent's folder is not written to.

    :raises InputError: bad options or data; a parent that is not an SICF model, has other
        classes or VGG16 weights that cannot be reproduced, or is a legacy pickled forest
        without ``cfg.trust_pickle``; ``out_dir`` = the parent's folder.
    """
    if cfg.init_model:
        from ..catalogue import resolve_model

        if Path(out_dir).resolve() == Path(resolve_model(cfg.init_model)).resolve():
            raise InputError(f"--out {out_dir}: that is the parent model's folder; retraining writes a new "
                             "version beside it and leaves the parent untouched")
    else:
        with_defaults(cfg).check()
    root, paths, labels, class_names, tr, va, vgg, feats, codebook, fused, timing, ctx = _prepare_data(
        data_dir, cfg, progress)
    cfg, parent, pmodel = ctx["cfg"], ctx["parent"], ctx["parent_model"]
    keep = pmodel.mask if pmodel is not None and not cfg.reselect else None
    forest, mask, sel, metrics, t2 = _fit_variant(fused, labels, tr, va, class_names, cfg, progress, mask=keep)
    card = _card(cfg, root, paths, labels, tr, va, class_names, vgg, codebook, mask, sel, metrics, {**timing, **t2}, out_dir)
    if parent is not None:
        from ..retrain import version_card

        card["codebook"] = {"inherited_from": parent.id}
        if keep is not None:
            card["selection"] = dict(parent.card.get("selection") or {}, inherited_from=parent.id)
        card = version_card(card, parent, cfg.model_id, ctx["parent_validation_kept"])
    folder = save_sicf_model(out_dir, card, forest, codebook, mask,
                             extra_files={"split.json": _split_json(root, paths, tr, va, class_names)})
    if progress:
        progress({"event": "done", "pipeline": "sicf", "model": str(folder),
                  "metrics": {"val_accuracy": metrics["accuracy"]["value"], "n_features_kept": int(mask.sum())}})
    return folder


def run_ablation(data_dir, out_dir, cfg: SICFConfig, progress=None, variants=None) -> dict:
    """The paper's ablation on one split and seed: SIFT->RF, VGG16->RF, SIFT+VGG16->RF,
    VGG16->LO-RF and SIFT+VGG16->LO-RF (features extracted once). Writes ``ablation.json``
    and ``ablation.md`` in ``out_dir``.

    :returns: ``{"rows": [{"variant", "accuracy", "sensitivity", "specificity", "auc", "f1"
        (each {"value", "ci95"}), "n_features_kept", "selection_s", "forest_fit_s"}], "config", ...}``.
    """
    from ..io import atomic_write_text

    with_defaults(cfg).check()
    names = list(variants or ABLATION_VARIANTS)
    for name in names:
        if name not in ABLATION_VARIANTS:
            raise InputError(f"unknown ablation variant '{name}'; known: {', '.join(ABLATION_VARIANTS)}")
    root, paths, labels, class_names, tr, va, vgg, feats, codebook, fused, timing, ctx = _prepare_data(
        data_dir, cfg, progress)
    cfg = ctx["cfg"]
    rows = []
    for name in names:
        blocks, select = ABLATION_VARIANTS[name]
        vcfg = replace(cfg, blocks=blocks, select=select)
        if progress:
            progress({"event": "variant", "variant": name})
        _, mask, sel, m, t = _fit_variant(fused, labels, tr, va, class_names, vcfg, progress)
        rows.append({"variant": name, **{k: m[k] for k in ("accuracy", "sensitivity", "specificity", "auc", "f1")},
                     "n_features": int(block_mask(cfg.n_words, blocks, vgg.dim).sum()), "n_features_kept": int(mask.sum()),
                     "loa_cv_accuracy": sel["cv_accuracy"] if sel else None, **t})
    doc = {"rows": rows, "data": str(root), "class_names": class_names, "n_train": int(len(tr)),
           "n_validation": int(len(va)), "vgg16": vgg.provenance, "timing_s": timing,
           "config": {k: v for k, v in asdict(cfg).items()
                      if k not in ("extra_card", "blocks", "select", "cache_dir", "trust_pickle")}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ablation.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out / "ablation.md", ablation_markdown(doc))
    return doc


def ablation_markdown(doc: dict) -> str:
    c = doc["config"]

    def cell(s):
        return "–" if s["value"] is None else (f"{s['value']:.3f}" + (f" ({s['ci95'][0]:.3f}–{s['ci95'][1]:.3f})" if s["ci95"] else ""))

    vgg = doc["vgg16"]["source"]
    cnn = {"efficientnet-lite0": "EfficientNet-Lite0"}.get(doc["vgg16"].get("network"), "VGG16")
    lines = [f"SICF ablation on {Path(doc['data']).name}: {doc['n_train']} training / {doc['n_validation']} validation "
             f"slices, ROI {c['roi']}, {c['image_size']} px, {cnn} {'ImageNet' if vgg == 'file' else 'RANDOM-INIT (no ImageNet weights)'}"
             + (" (rows named VGG16 use it)" if cnn != "VGG16" else "") + ", "
             f"LOA population {c['population']} x {c['iterations']} iterations, seed {c['seed']}; "
             f"95% bootstrap CIs ({c['n_bootstrap']} resamples)", "",
             "| variant | accuracy | sensitivity | specificity | AUC | F1 | features kept | selection s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['variant']} | {cell(r['accuracy'])} | {cell(r['sensitivity'])} | {cell(r['specificity'])} | "
                     f"{cell(r['auc'])} | {cell(r['f1'])} | {r['n_features_kept']} / {r['n_features']} | {r['selection_s']:.0f} |")
    return "\n".join(lines) + "\n"
