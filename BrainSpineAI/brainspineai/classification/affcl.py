"""AFF-CL: contrastive learning with adaptive feature fusion for brain tumour classification
(Peng, He and Chang, Sci Rep 2026), and its ablation.

Network: :class:`networks.TwoBranchNet` (global branch on the slice, local branch on a crop
around the tumour, attentional feature fusion of Dai et al. 2021; the crop rule is in its
docstring) or, for the ablation, :class:`networks.SingleBranchNet`.

Loss per batch::

    L = CE(logits, y) + aux_weight * CE(aux_logits, y) + supcon_weight * SupCon(z, y; queue)

``CE`` is cross-entropy with label smoothing; ``aux_logits`` come from the global branch's
auxiliary head (two-branch only; it drives the crop). ``SupCon`` is the supervised
contrastive loss (Khosla et al., NeurIPS 2020; ``pytorch_metric_learning.losses.SupConLoss``,
temperature 0.1 as in the paper's main results) of the L2-normalised projections ``z``
(128-d) against a labelled memory queue of the last ``queue_size`` embeddings with their
labels (``CrossBatchMemory``, Wang et al. 2020, "cross-batch memory"; default 1024, the
library's default, about a quarter of an epoch here): every queued embedding of the same
class is a positive, every other one a negative. Each DDP process keeps its own queue.

Training data, augmentation (flips, rotation, scaling, translation, gamma, simulated skull
stripping) and the validation rule (stratified split, last epoch kept) are those of
:mod:`brainspineai.classification.training`. Rows with a known tumour box are never skull-stripped (the
strip re-crops the slice, which would move the box); the box is carried through the
augmentation as a mask channel.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..engine import CommonConfig
from ..errors import InputError

ABLATION_VARIANTS = {
    "cross-entropy": dict(two_branch=False, supcon_weight=0.0),
    "+SupCon queue": dict(two_branch=False),
    "+AFF two-branch": dict(supcon_weight=0.0),
    "AFF-CL (both)": dict(),
}


@dataclass
class AFFCLConfig(CommonConfig):
    """Hyper-parameters of :func:`train_affcl` (sizes in pixels); the shared ones are in
    :class:`engine.CommonConfig`."""

    backbone: str = "resnet18-w32"
    two_branch: bool = True
    fusion: str = "aff"  # "aff" or "iaff"
    crop_fraction: float = 0.5
    supcon_weight: float = 0.5
    temperature: float = 0.1
    queue_size: int = 1024
    proj_dim: int = 128
    aux_weight: float = 0.3
    image_size: int = 128
    label_smoothing: float = 0.05
    skull_strip_p: float = 0.5
    boxes: str = ""  # optional tumour-box CSV (figshare3/tumor_boxes.csv layout)

    def extra_rules(self) -> list:
        return [("fusion", self.fusion in ("aff", "iaff"), "'aff' or 'iaff'"),
                ("crop_fraction", 0.1 <= self.crop_fraction <= 1.0, "between 0.1 and 1"),
                ("supcon_weight", self.supcon_weight >= 0, ">= 0"), ("aux_weight", self.aux_weight >= 0, ">= 0"),
                ("temperature", self.temperature > 0, "> 0"),
                ("queue_size", self.queue_size >= self.batch_size, "at least one batch (--batch-size)"),
                ("image_size", self.image_size >= 32, ">= 32")]

    def network_spec(self) -> dict:
        spec = {"kind": "two-branch" if self.two_branch else "single", "backbone": self.backbone,
                "proj_dim": self.proj_dim if self.supcon_weight > 0 else 0}
        if self.two_branch:
            spec |= {"fusion": self.fusion, "crop_fraction": self.crop_fraction}
        else:
            spec |= {"head": "linear"}
        return spec


def supcon_queue(proj_dim: int = 128, queue_size: int = 1024, temperature: float = 0.1):
    """SupCon loss against a labelled memory queue: ``pytorch_metric_learning``'s
    ``CrossBatchMemory(SupConLoss(temperature), proj_dim, queue_size)``. Called as
    ``loss = queue(z, y)`` with z (N, proj_dim) float32 L2-normalised and y (N,) int64; the
    batch is enqueued (oldest entries overwritten) and contrasted with the whole queue."""
    from pytorch_metric_learning.losses import CrossBatchMemory, SupConLoss

    return CrossBatchMemory(SupConLoss(temperature=temperature), embedding_size=proj_dim, memory_size=queue_size)


def boxes_from_masks(mask):
    """(N, 1, S, S) box masks after augmentation -> (N, 4) boxes (x0, y0, x1, y1 in [0, 1]),
    NaN rows where the mask is empty."""
    import torch

    m = mask[:, 0] > 0.5
    s = m.shape[-1]
    ar = torch.arange(s, dtype=torch.float32, device=mask.device)
    rows, cols = m.any(2), m.any(1)
    big = torch.tensor(float(s), device=mask.device)
    y0 = torch.where(rows, ar, big).min(1).values
    y1 = torch.where(rows, ar, -big).max(1).values + 1
    x0 = torch.where(cols, ar, big).min(1).values
    x1 = torch.where(cols, ar, -big).max(1).values + 1
    out = torch.stack([x0, y0, x1, y1], 1) / s
    out[~rows.any(1)] = float("nan")
    return out


def box_masks(boxes, size: int):
    """(N, 4) boxes in [0, 1] (NaN rows allowed) -> (N, 1, size, size) float masks."""
    import torch

    ar = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    b = torch.nan_to_num(boxes, nan=-1.0)
    inx = (ar[None] >= b[:, 0:1]) & (ar[None] < b[:, 2:3])
    iny = (ar[None] >= b[:, 1:2]) & (ar[None] < b[:, 3:4])
    return (iny[:, :, None] & inx[:, None, :]).float()[:, None]


def train_affcl(data_dir, out_dir, config: AFFCLConfig, resume: bool = False, progress=None) -> Path:
    """Train an AFF-CL (or ablation-variant) classifier and save it as a catalogue model.

    :param data_dir: ImageFolder root (one folder of 2D slices per class).
    :param out_dir: model folder to create (replaced atomically at the end).
    :param config: :class:`AFFCLConfig`.
    :param resume: continue from ``<out_dir>.work/last.pt``.
    :param progress: callable receiving event dicts (see :mod:`brainspineai.engine`).
    :returns: the model folder (``model.json`` has validation metrics and the history).
    :raises InputError: bad dataset or options; ModelError: unknown backbone.
    """
    import torch
    import torch.nn.functional as F
    from .. import engine
    from ..catalogue import save_model
    from .data import load_labelled_split
    from .networks import SingleBranchNet, TwoBranchNet
    from ..retrain import init_weights, keep_parent_split, load_parent, version_card
    from .predict import predict_batches
    from .training import augment, skull_strip_like

    cfg = config
    cfg.check()
    engine.seed_everything(cfg.seed)
    fabric = engine.make_fabric(cfg.device)
    data = load_labelled_split(data_dir, cfg.image_size, cfg.val_fraction, cfg.seed, cfg.limit_per_class,
                               boxes_csv=cfg.boxes or None)
    parent = load_parent(cfg.init_model, "classification-2d", data.class_names, cfg.image_size) \
        if cfg.init_model else None
    data.train_idx, data.val_idx, n_kept = keep_parent_split(parent, data.paths, data.root, data.train_idx, data.val_idx)
    tr, va = torch.as_tensor(data.train_idx), torch.as_tensor(data.val_idx)
    x_tr, y_tr, x_va, y_va = data.x[tr], data.y[tr], data.x[va], data.y[va]
    b_tr = data.boxes[tr] if data.boxes is not None else None
    x_tr_stripped = skull_strip_like(x_tr, cfg.seed) if cfg.skull_strip_p > 0 else None
    if progress and fabric.is_global_zero:
        progress({"event": "data", "pipeline": "affcl", "n_train": len(tr), "n_val": len(va),
                  "classes": data.class_names,
                  "n_boxes": int((~torch.isnan(b_tr[:, 0])).sum()) if b_tr is not None else 0})

    spec = cfg.network_spec()
    k = len(data.class_names)
    if cfg.two_branch:
        net = TwoBranchNet(cfg.backbone, k, cfg.image_size, fusion=cfg.fusion, crop_fraction=cfg.crop_fraction,
                           proj_dim=spec["proj_dim"])
    else:
        net = SingleBranchNet(cfg.backbone, k, cfg.image_size, proj_dim=spec["proj_dim"])
    if parent is not None:
        init_weights(net, parent)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt = fabric.setup(net, opt)
    sched = engine.one_cycle(opt, cfg.lr, cfg.epochs, engine.steps_per_epoch(len(tr), cfg.batch_size, fabric.world_size))
    queue = None
    stateful = {}
    if cfg.supcon_weight > 0:
        queue = supcon_queue(cfg.proj_dim, cfg.queue_size, cfg.temperature).to(fabric.device)
        stateful["queue"] = engine.QueueState(queue)

    def step(idx, gen):
        xb = x_tr[idx]
        known = b_tr[idx] if b_tr is not None else None
        if x_tr_stripped is not None:
            use = torch.rand(len(idx), generator=gen) < cfg.skull_strip_p
            if known is not None:
                use &= torch.isnan(known[:, 0])
            xb = torch.where(use[:, None, None, None], x_tr_stripped[idx], xb)
        if known is not None:
            both = augment(torch.cat([xb, box_masks(known, cfg.image_size)], 1), gen)
            xb, known = both[:, :1], boxes_from_masks(both[:, 1:])
        else:
            xb = augment(xb, gen)
        xb = xb.to(fabric.device)
        yb = y_tr[idx].to(fabric.device)
        with fabric.autocast():
            out = model(xb, known_boxes=known, return_features=True) if cfg.two_branch else \
                model(xb, return_features=True)
            ce = F.cross_entropy(out["logits"].float(), yb, label_smoothing=cfg.label_smoothing)
            loss, logs = ce, {"ce": ce.detach()}
            if cfg.two_branch:
                aux = F.cross_entropy(out["aux_logits"].float(), yb, label_smoothing=cfg.label_smoothing)
                loss = loss + cfg.aux_weight * aux
                logs["aux_ce"] = aux.detach()
        if queue is not None:
            sc = queue(out["projection"].float(), yb)
            loss = loss + cfg.supcon_weight * sc
            logs["supcon"] = sc.detach()
        return loss, logs

    last = {}

    def evaluate():
        last["probs"] = predict_batches(net, x_va, fabric.device)
        return {"val_accuracy": float(np.mean(last["probs"].argmax(1) == y_va.numpy()))}

    conf = {k2: v for k2, v in asdict(cfg).items() if k2 not in ("extra_card", "model_id")} | {"data": str(Path(data.root).resolve())}  # resume only on the same data
    result = engine.fit(pipeline="affcl", fabric=fabric, model=model, optimizer=opt, scheduler=sched,
                        n_train=len(tr), batch_size=cfg.batch_size, epochs=cfg.epochs, step_fn=step,
                        eval_fn=evaluate, out_dir=out_dir, config=conf, seed=cfg.seed, resume=resume,
                        progress=progress, stateful=stateful)
    out_dir = Path(out_dir)
    if not fabric.is_global_zero:
        return out_dir
    probs = last["probs"] if "probs" in last else predict_batches(net, x_va, fabric.device)
    card = classifier_card(cfg.model_id or out_dir.name, "affcl" if cfg.two_branch or cfg.supcon_weight else
                           "cross-entropy", net, spec, data, cfg.image_size, probs, conf, result, fabric,
                           cfg.extra_card)
    card = version_card(card, parent, cfg.model_id, n_kept)
    folder = save_model(net, card, out_dir, extra_files={"split.json": json.dumps(data.split_json(), indent=1)})
    if progress:
        progress({"event": "done", "pipeline": "affcl", "model": str(folder),
                  "metrics": {"val_accuracy": card["metrics"]["validation"]["accuracy"]}})
    return folder


def classifier_card(model_id, pipeline, net, spec, data, image_size, probs, conf, result, fabric, extra) -> dict:
    """The model card of a classifier trained by one of the contrastive pipelines."""
    from ..engine import precision_for
    from ..metrics import classification_metrics, probability_metrics
    from .preprocess import NORMALISATION_CARD

    y_va = data.y[data.val_idx].numpy()
    metrics = classification_metrics(y_va, probs.argmax(1), data.class_names)
    metrics["probability_metrics"] = probability_metrics(y_va, probs, data.class_names, n_bootstrap=500)
    counts = {n: int((data.y == i).sum()) for i, n in enumerate(data.class_names)}
    return {
        "id": model_id,
        "version": 1,
        "task": "classification-2d",
        "architecture": f"{spec['kind']}:{spec['backbone']}",
        "network": spec,
        "class_names": data.class_names,
        "input_size": [image_size, image_size],
        "in_channels": 1,
        "intensity_normalisation": dict(NORMALISATION_CARD),
        "gradcam_layer": net.gradcam_layer,
        "training_data": {"folder": data.root.name, "images_per_class": counts, "n_train": int(len(data.train_idx)),
                          "n_validation": int(len(data.val_idx)), "split_file": "split.json"},
        "training": conf | {"pipeline": pipeline, "device": str(fabric.device), "processes": fabric.world_size,
                            "precision": precision_for(fabric.device.type), "history": result["history"],
                            "selection": "last epoch (validation images choose nothing)",
                            "train_seconds": result["train_seconds"],
                            "images_per_second": result["images_per_second"]},
        "metrics": {"validation": metrics},
        **extra,
    }


def run_ablation(data_dir, out_dir, base: AFFCLConfig, progress=None, variants=None) -> dict:
    """Train the ablation variants (plain cross-entropy, +SupCon queue, +AFF two-branch,
    both) on the same split and seed; write ``ablation.json`` and ``ablation.md`` in
    ``out_dir`` (one model folder per variant beside them).

    :returns: the table as a dict ``{"rows": [...], "config": {...}}``.
    """
    from dataclasses import replace

    from ..io import atomic_write_text

    if not Path(data_dir).is_dir():  # before the results folder is made
        raise InputError(f"{data_dir}: dataset folder not found")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in variants or ABLATION_VARIANTS:
        if name not in ABLATION_VARIANTS:
            raise InputError(f"unknown ablation variant '{name}'; known: {', '.join(ABLATION_VARIANTS)}")
        cfg = replace(base, **ABLATION_VARIANTS[name], model_id=f"{base.model_id or 'ablation'}-{_slug(name)}")
        folder = train_affcl(data_dir, out_dir / _slug(name), cfg, resume=True, progress=progress)
        row = summary_row(folder)
        row.pop("card")
        rows.append({"variant": name, **row})
    doc = {"rows": rows, "config": {k: v for k, v in asdict(base).items() if k not in ("extra_card",)}}
    atomic_write_text(out_dir / "ablation.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out_dir / "ablation.md", ablation_markdown(doc))
    return doc


def summary_row(folder) -> dict:
    """One report row from a trained classifier's model card: validation accuracy with its
    95% bootstrap interval, macro F1 and AUC, training time and throughput (and the card)."""
    card = json.loads((Path(folder) / "model.json").read_text())
    m = card["metrics"]["validation"]
    pm = m.get("probability_metrics", {})
    return {"model": str(folder), "accuracy": m["accuracy"], "accuracy_ci95": pm.get("accuracy", {}).get("ci95"),
            "macro_f1": m["macro_f1"], "macro_auc": (pm.get("macro_auc") or {}).get("value"), "n_validation": m["n"],
            "train_seconds": card["training"]["train_seconds"],
            "images_per_second": card["training"]["images_per_second"], "card": card}


def ablation_markdown(doc: dict) -> str:
    c = doc["config"]
    lines = [f"AFF-CL ablation: backbone {c['backbone']}, {c['image_size']} px, {c['epochs']} epochs, seed {c['seed']}, "
             f"validation fraction {c['val_fraction']} (same split for every row)", "",
             "| variant | val. accuracy (95% CI) | macro F1 | macro AUC | train s | img/s |",
             "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        ci = f" ({r['accuracy_ci95'][0]:.1%}–{r['accuracy_ci95'][1]:.1%})" if r.get("accuracy_ci95") else ""
        auc = f"{r['macro_auc']:.3f}" if r.get("macro_auc") is not None else "–"
        lines.append(f"| {r['variant']} | {r['accuracy']:.1%}{ci} | {r['macro_f1']:.3f} | {auc} | "
                     f"{r['train_seconds']:.0f} | {r['images_per_second']} |")
    return "\n".join(lines) + "\n"


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-").replace("--", "-")
