"""SSCLNet: SimCLR-style self-supervised pre-training on unlabelled slices, then fine-tuning
a classifier on few labels, and the label-efficiency report.

Pre-training (Chen, Kornblith, Norouzi and Hinton, "A Simple Framework for Contrastive
Learning of Visual Representations", ICML 2020): two augmented views of every slice (see
:func:`simclr_views`), a ResNet-18-layout encoder (``resnet18-w32`` by default, half width;
``--backbone resnet18`` for the usual width), a projection head to 128-d
(:class:`networks.SimCLRNet`), and the NT-Xent loss (``pytorch_metric_learning.losses.
NTXentLoss``; temperature 0.5, SimCLR's value for small batches) where the two views of a
slice are the positive pair and the other ``2(B - 1)`` views of the batch the negatives.
Labels are never used by the loss. When the data folder has class folders, the stratified
validation split (``val_fraction``, ``seed``, the same rule as every classifier here) is
held out of pre-training, so that fine-tuned models are validated on images the encoder
never saw; the labels then also give a k-nearest-neighbour accuracy of the frozen
representation at the end (a monitor only; it chooses nothing).

Fine-tuning: :class:`networks.SingleBranchNet` with the pre-trained backbone and a new
linear or MLP head, trained with cross-entropy on a stratified ``label_fraction`` of the
training split (the validation split stays whole), encoder frozen or trainable. Without an
encoder the same recipe starts from random weights: the baseline of the label-efficiency
report.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..engine import CommonConfig
from ..errors import InputError


@dataclass
class SimCLRConfig(CommonConfig):
    """Hyper-parameters of :func:`train_simclr` (sizes in pixels); shared ones in
    :class:`engine.CommonConfig`."""

    backbone: str = "resnet18-w32"
    image_size: int = 96
    proj_dim: int = 128
    proj_hidden: int = 512
    temperature: float = 0.5
    epochs: int = 50
    batch_size: int = 64
    weight_decay: float = 1e-4

    def extra_rules(self) -> list:
        return [("temperature", self.temperature > 0, "> 0"), ("image_size", self.image_size >= 32, ">= 32")]


def simclr_views(x, generator):
    """One random view per slice of a batch (N, 1, S, S) in [0, 1], SSCLNet's augmentations:
    rotation within +/-15 degrees, horizontal and vertical flips (p = 0.5 each), a random
    crop of 80-90% of the side zoomed back to the full size, then intensity jitter
    (gamma 0.7-1.4, contrast 0.8-1.2, brightness +/-0.1, p = 0.8) and Gaussian noise
    (sigma up to 0.03). Call twice for the two views."""
    import torch
    import torch.nn.functional as F

    n, g = x.shape[0], generator

    def u(lo, hi):
        return lo + torch.rand(n, generator=g) * (hi - lo)

    angle = u(-15, 15) * math.pi / 180
    scale = u(0.80, 0.90)
    fx = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    fy = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    tx, ty = u(-1, 1) * (1 - scale), u(-1, 1) * (1 - scale)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * fx, -sin * fy, tx], 1), torch.stack([sin * fx, cos * fy, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)
    jitter = (torch.rand(n, generator=g) < 0.8).to(x.device)[:, None, None, None]
    gamma = torch.exp(u(math.log(0.7), math.log(1.4))).to(x.device)[:, None, None, None]
    contrast = u(0.8, 1.2).to(x.device)[:, None, None, None]
    bright = u(-0.1, 0.1).to(x.device)[:, None, None, None]
    jittered = ((v.pow(gamma) - 0.5) * contrast + 0.5 + bright).clamp(0, 1)
    v = torch.where(jitter, jittered, v)
    sigma = u(0, 0.03).to(x.device)[:, None, None, None]
    noise = torch.randn(v.shape, generator=g).to(x.device)
    return (v + sigma * noise).clamp(0, 1)


def scan_unlabelled(root) -> tuple[list, np.ndarray | None, list | None]:
    """Image files under ``root``: an ImageFolder (class folders) gives labels too
    (``paths, labels, class_names``); a flat folder gives ``paths, None, None``."""
    from .data import scan_image_folder
    from ..io import SLICE_SUFFIXES, _suffix

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    if any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        return scan_image_folder(root)
    paths = sorted(p for p in root.iterdir() if p.is_file() and _suffix(p) in SLICE_SUFFIXES)
    if not paths:
        raise InputError(f"{root}: no 2D slice images found")
    from ..datasets import readable_slices, warn_skipped

    paths, bad = readable_slices(paths)  # undecodable slices are left out, as dataset-summary says
    warn_skipped(root, bad)
    if not paths:
        raise InputError(f"{root}: none of the 2D slice images can be decoded")
    return paths, None, None


def train_simclr(data_dir, out_dir, config: SimCLRConfig, resume: bool = False, progress=None) -> Path:
    """Self-supervised pre-training; saves an ``encoder-2d`` catalogue model.

    :param data_dir: folder of 2D slices, flat or ImageFolder (then the validation split is
        held out and only the training part is used).
    :raises InputError: no images, fewer than two batches' worth, bad options.
    """
    import torch
    from pytorch_metric_learning.losses import NTXentLoss

    from .. import engine
    from ..catalogue import save_model
    from .preprocess import NORMALISATION_CARD
    from .data import limit_per_class_subset, load_slice_batch, stratified_split
    from .networks import SimCLRNet
    from ..retrain import start_from, version_card

    cfg = config
    cfg.check()
    engine.seed_everything(cfg.seed)
    fabric = engine.make_fabric(cfg.device)
    data_dir = Path(data_dir)
    paths, labels, class_names = scan_unlabelled(data_dir)
    if labels is not None:
        paths, labels = limit_per_class_subset(paths, labels, cfg.limit_per_class, cfg.seed)
    if labels is not None:
        train_idx, val_idx = stratified_split(labels, cfg.val_fraction, cfg.seed)
    else:
        train_idx, val_idx = np.arange(len(paths)), np.zeros(0, dtype=np.int64)
    if len(train_idx) < 4:
        raise InputError(f"{data_dir}: need at least 4 training images for contrastive pairs, found {len(train_idx)}")
    x_all = load_slice_batch(paths, cfg.image_size)
    x_tr = x_all[torch.as_tensor(train_idx)]
    if progress and fabric.is_global_zero:
        progress({"event": "data", "pipeline": "simclr", "n_train": len(train_idx), "n_held_out": len(val_idx)})

    net = SimCLRNet(cfg.backbone, cfg.image_size, proj_dim=cfg.proj_dim, proj_hidden=cfg.proj_hidden)
    parent = start_from(cfg.init_model, net, "encoder-2d", None, cfg.image_size)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt = fabric.setup(net, opt)
    sched = engine.one_cycle(opt, cfg.lr, cfg.epochs, engine.steps_per_epoch(len(train_idx), cfg.batch_size,
                                                                             fabric.world_size))
    loss_fn = NTXentLoss(temperature=cfg.temperature)

    def step(idx, gen):
        xb = x_tr[idx]
        v = torch.cat([simclr_views(xb, gen), simclr_views(xb, gen)]).to(fabric.device)
        pair = torch.arange(len(idx), device=fabric.device).repeat(2)
        with fabric.autocast():
            z = model(v)
        loss = loss_fn(z.float(), pair)
        return loss, {}

    conf = {k: v for k, v in asdict(cfg).items() if k not in ("extra_card", "model_id")} | {"data": str(data_dir.resolve())}
    result = engine.fit(pipeline="simclr", fabric=fabric, model=model, optimizer=opt, scheduler=sched,
                        n_train=len(train_idx), batch_size=cfg.batch_size, epochs=cfg.epochs, step_fn=step,
                        eval_fn=None, out_dir=out_dir, config=conf, seed=cfg.seed, resume=resume, progress=progress)
    out_dir = Path(out_dir)
    if not fabric.is_global_zero:
        return out_dir
    monitor = {}
    if labels is not None and len(val_idx):
        feats = embed_batches(net, x_all, fabric.device)
        monitor["knn_val_accuracy"] = knn_accuracy(feats[train_idx], labels[train_idx], feats[val_idx],
                                                   labels[val_idx])
    card = {
        "id": cfg.model_id or out_dir.name,
        "version": 1,
        "task": "encoder-2d",
        "architecture": f"simclr:{cfg.backbone}",
        "network": {"kind": "simclr", "backbone": cfg.backbone, "proj_dim": cfg.proj_dim, "proj_hidden": cfg.proj_hidden},
        "class_names": [],
        "input_size": [cfg.image_size, cfg.image_size],
        "in_channels": 1,
        "intensity_normalisation": dict(NORMALISATION_CARD),
        "training_data": {"folder": data_dir.name, "n_train": int(len(train_idx)),
                          "n_held_out": int(len(val_idx)), "labels_used": "never by the loss; held-out split "
                          "and the k-NN monitor only" if labels is not None else "none",
                          "split_file": "split.json" if labels is not None else None},
        "training": conf | {"pipeline": "simclr", "loss": "NT-Xent", "device": str(fabric.device),
                            "processes": fabric.world_size, "history": result["history"],
                            "train_seconds": result["train_seconds"],
                            "images_per_second": result["images_per_second"]},
        "metrics": {"monitor": monitor},
        **cfg.extra_card,
    }
    extra = {}
    if labels is not None:
        extra["split.json"] = json.dumps({"data_folder": data_dir.name, "class_names": class_names,
                                          "validation": [str(paths[i].relative_to(data_dir)) for i in val_idx],
                                          "train": [str(paths[i].relative_to(data_dir)) for i in train_idx]}, indent=1)
    card = version_card(card, parent, cfg.model_id)
    folder = save_model(net, card, out_dir, extra_files=extra)
    if progress:
        progress({"event": "done", "pipeline": "simclr", "model": str(folder), "metrics": monitor})
    return folder


def embed_batches(net, x, device, batch_size: int = 256) -> np.ndarray:
    """Pooled backbone features (N, C) float32 of a prepared batch (``net.embed``)."""
    import torch

    from ..device import autocast

    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            with autocast(device):
                out.append(net.embed(x[i:i + batch_size].to(device)).float().cpu())
    return torch.cat(out).numpy()


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int = 20) -> float:
    """Cosine k-nearest-neighbour accuracy (majority vote, k = 20)."""
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=min(k, len(train_labels)), metric="cosine")
    clf.fit(train_feats, train_labels)
    return float(np.mean(clf.predict(test_feats) == test_labels))


@dataclass
class FinetuneConfig(CommonConfig):
    """Hyper-parameters of :func:`train_finetune`; shared ones in :class:`engine.CommonConfig`."""

    encoder: str = ""  # encoder-2d model id / folder / URL; "" = random initialisation (baseline)
    backbone: str = "resnet18-w32"  # only without an encoder
    image_size: int = 0  # 0 = the encoder's input size (96 without an encoder)
    head: str = "linear"  # "linear" or "mlp"
    freeze_encoder: bool = False
    label_fraction: float = 1.0
    label_smoothing: float = 0.05
    skull_strip_p: float = 0.5

    def extra_rules(self) -> list:
        return [("head", self.head in ("linear", "mlp"), "'linear' or 'mlp'"),
                ("label_fraction", 0 < self.label_fraction <= 1, "in (0, 1]"),
                ("image_size", self.image_size == 0 or self.image_size >= 32, "0 (the encoder's) or >= 32")]


def labelled_subset(labels, train_idx, fraction: float, seed: int) -> np.ndarray:
    """A stratified, seeded ``fraction`` of ``train_idx`` (at least one image per class)."""
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"--label-fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed + 7919)
    keep = []
    for c in np.unique(labels[train_idx]):
        idx = train_idx[labels[train_idx] == c]
        keep.extend(rng.permutation(idx)[:max(1, int(round(len(idx) * fraction)))])
    return np.sort(np.asarray(keep, dtype=np.int64))


def train_finetune(data_dir, out_dir, config: FinetuneConfig, resume: bool = False, progress=None) -> Path:
    """Fine-tune a classifier from a SimCLR encoder (or from scratch) on a fraction of labels.

    :raises InputError: bad dataset or options, or an encoder pre-trained on this folder's
        validation images; ModelError: encoder not found or not an ``encoder-2d`` model.
    """
    import torch
    import torch.nn.functional as F

    from .. import engine
    from .affcl import classifier_card
    from ..catalogue import load_model, save_model
    from .data import load_labelled_split
    from .networks import SingleBranchNet
    from ..retrain import init_weights, keep_parent_split, load_parent, version_card
    from .predict import predict_batches
    from .training import augment, skull_strip_like

    cfg = config
    cfg.check()
    engine.seed_everything(cfg.seed)
    fabric = engine.make_fabric(cfg.device)
    encoder = None
    backbone, size = cfg.backbone, cfg.image_size or 96
    if cfg.encoder:
        encoder = load_model(cfg.encoder, "cpu", task="encoder-2d")
        backbone = encoder.card["network"]["backbone"]
        size = cfg.image_size or encoder.input_size
        if size != encoder.input_size and backbone == "vit-tiny":
            raise InputError(f"encoder {encoder.id} is a ViT for {encoder.input_size} px inputs, not {size}")
    elif cfg.freeze_encoder:
        raise InputError("--freeze-encoder needs --encoder (a frozen random encoder learns nothing)")
    data = load_labelled_split(data_dir, size, cfg.val_fraction, cfg.seed, cfg.limit_per_class)
    parent = load_parent(cfg.init_model, "classification-2d", data.class_names, size) if cfg.init_model else None
    data.train_idx, data.val_idx, n_kept = keep_parent_split(parent, data.paths, data.root, data.train_idx, data.val_idx)
    if encoder is not None:
        _check_no_leak(encoder, data)
    labels = data.y.numpy()
    sub = labelled_subset(labels, data.train_idx, cfg.label_fraction, cfg.seed)
    tr, va = torch.as_tensor(sub), torch.as_tensor(data.val_idx)
    x_tr, y_tr, x_va, y_va = data.x[tr], data.y[tr], data.x[va], data.y[va]
    x_tr_stripped = skull_strip_like(x_tr, cfg.seed) if cfg.skull_strip_p > 0 else None
    if progress and fabric.is_global_zero:
        progress({"event": "data", "pipeline": "finetune", "n_labelled": len(sub), "n_train_split": len(data.train_idx),
                  "n_val": len(va), "classes": data.class_names})

    net = SingleBranchNet(backbone, len(data.class_names), size, head=cfg.head)
    if encoder is not None:
        net.backbone.load_state_dict(encoder.network.backbone.state_dict())
    if parent is not None:
        init_weights(net, parent)
    if cfg.freeze_encoder:
        net.freeze_backbone()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt = fabric.setup(net, opt)
    sched = engine.one_cycle(opt, cfg.lr, cfg.epochs, engine.steps_per_epoch(len(sub), cfg.batch_size, fabric.world_size))

    def step(idx, gen):
        xb = x_tr[idx]
        if x_tr_stripped is not None:
            use = (torch.rand(len(idx), generator=gen) < cfg.skull_strip_p)[:, None, None, None]
            xb = torch.where(use, x_tr_stripped[idx], xb)
        xb = augment(xb, gen).to(fabric.device)
        with fabric.autocast():
            logits = model(xb)
        return F.cross_entropy(logits.float(), y_tr[idx].to(fabric.device), label_smoothing=cfg.label_smoothing), {}

    last = {}

    def evaluate():
        last["probs"] = predict_batches(net, x_va, fabric.device)
        return {"val_accuracy": float(np.mean(last["probs"].argmax(1) == y_va.numpy()))}

    conf = {k: v for k, v in asdict(cfg).items() if k not in ("extra_card", "model_id")} | {"image_size": size, "data": str(Path(data.root).resolve())}
    result = engine.fit(pipeline="finetune", fabric=fabric, model=model, optimizer=opt, scheduler=sched,
                        n_train=len(sub), batch_size=cfg.batch_size, epochs=cfg.epochs, step_fn=step,
                        eval_fn=evaluate, out_dir=out_dir, config=conf, seed=cfg.seed, resume=resume,
                        progress=progress)
    out_dir = Path(out_dir)
    if not fabric.is_global_zero:
        return out_dir
    probs = last["probs"] if "probs" in last else predict_batches(net, x_va, fabric.device)
    spec = {"kind": "single", "backbone": backbone, "head": cfg.head, "proj_dim": 0}
    extra = dict(cfg.extra_card)
    extra["pretraining"] = ({"encoder": encoder.id, "method": "SimCLR (NT-Xent)", "sha256": encoder.card["sha256"]}
                            if encoder is not None else None)
    extra["labels"] = {"fraction": cfg.label_fraction, "n_labelled": int(len(sub))}
    card = classifier_card(cfg.model_id or out_dir.name, "finetune", net, spec, data, size, probs, conf, result,
                           fabric, extra)
    card = version_card(card, parent, cfg.model_id, n_kept)
    folder = save_model(net, card, out_dir, extra_files={"split.json": json.dumps(data.split_json(), indent=1)})
    if progress:
        progress({"event": "done", "pipeline": "finetune", "model": str(folder),
                  "metrics": {"val_accuracy": card["metrics"]["validation"]["accuracy"]}})
    return folder


def _check_no_leak(encoder, data) -> None:
    """Refuse an encoder pre-trained on images of this dataset's validation split."""
    split_file = encoder.folder / "split.json"
    if not split_file.is_file():
        return
    split = json.loads(split_file.read_text())
    if split.get("data_folder") != data.root.name:
        return
    ours = {str(data.paths[i].relative_to(data.root)) for i in data.val_idx}
    leaked = ours & set(split.get("train", []))
    if leaked:
        raise InputError(f"encoder {encoder.id} was pre-trained on {len(leaked)} of this split's validation images; "
                         "pre-train with the same --val-fraction and --seed")


def run_label_efficiency(data_dir, out_dir, encoder: str, base: FinetuneConfig, fractions=(0.1, 0.25, 1.0),
                         progress=None) -> dict:
    """Fine-tune with and without the SimCLR encoder at each label fraction (same split,
    seed and recipe); write ``label_efficiency.json`` and ``.md`` in ``out_dir``."""
    from dataclasses import replace

    from .affcl import summary_row
    from ..catalogue import load_model
    from ..io import atomic_write_text

    if not encoder:
        raise InputError("the label-efficiency report needs --encoder (a SimCLR model)")
    enc = load_model(encoder, "cpu", task="encoder-2d")
    size = base.image_size or enc.input_size
    if not Path(data_dir).is_dir():  # before the results folder is made
        raise InputError(f"{data_dir}: dataset folder not found")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for frac in fractions:
        for pre in (True, False):
            name = f"{'simclr' if pre else 'scratch'}-{int(round(frac * 100))}pct"
            cfg = replace(base, encoder=str(enc.folder) if pre else "", backbone=enc.card["network"]["backbone"],
                          image_size=size, label_fraction=frac, model_id=f"{base.model_id or 'ssclnet'}-{name}",
                          freeze_encoder=base.freeze_encoder and pre)
            folder = train_finetune(data_dir, out_dir / name, cfg, resume=True, progress=progress)
            row = summary_row(folder)
            card = row.pop("card")
            rows.append({"label_fraction": frac, "pretrained": pre, "n_labelled": card["labels"]["n_labelled"], **row})
    doc = {"encoder": enc.id, "rows": rows, "config": {k: v for k, v in asdict(base).items() if k != "extra_card"}}
    atomic_write_text(out_dir / "label_efficiency.json", json.dumps(doc, indent=2) + "\n")
    lines = [f"SSCLNet label efficiency: encoder {enc.id}, {size} px, {base.epochs} epochs, head {base.head}, "
             f"encoder {'frozen' if base.freeze_encoder else 'trainable'}, seed {base.seed} (same validation split)", "",
             "| labels | n labelled | SimCLR pre-trained | val. accuracy (95% CI) | macro F1 | macro AUC |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ci = f" ({r['accuracy_ci95'][0]:.1%}–{r['accuracy_ci95'][1]:.1%})" if r.get("accuracy_ci95") else ""
        auc = f"{r['macro_auc']:.3f}" if r.get("macro_auc") is not None else "–"
        lines.append(f"| {r['label_fraction']:.0%} | {r['n_labelled']} | {'yes' if r['pretrained'] else 'no'} | "
                     f"{r['accuracy']:.1%}{ci} | {r['macro_f1']:.3f} | {auc} |")
    atomic_write_text(out_dir / "label_efficiency.md", "\n".join(lines) + "\n")
    return doc

