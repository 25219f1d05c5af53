"""Supervised training of the 2D tumour classifier (cross-entropy).

The data are held in memory as prepared slices (see :mod:`brainspineai.classification.preprocess`), so an
epoch costs only the network. Augmentation runs on whole batches: random horizontal flip,
rotation within +/-15 degrees, isotropic scaling 0.85-1.15, translation up to 8% of the
side, and gamma 0.7-1.4; with probability ``skull_strip_p`` a training slice is replaced by a
simulated skull-stripped version (see :func:`skull_strip_like`), so that skull-stripped
volumes (BraTS-style preprocessing) are less foreign to a model trained on whole-head
slices. Optimiser: AdamW with a one-cycle learning-rate schedule.

A stratified validation split (``val_fraction``, ``seed``) is held apart from the start and
never trained on. By default (``keep="last"``) the weights of the last epoch are kept, so the
validation accuracy in the model card is an unbiased estimate: the validation images choose
nothing. ``keep="best"`` keeps the epoch with the best validation accuracy instead (the card
then says so, and its validation figure is optimistic).
Checkpoints go to ``<out>.work/last.pt`` after every epoch; ``resume=True`` continues from
there. The final model folder is written atomically (see :func:`catalogue.save_model`),
with ``split.json`` listing the validation images.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..engine import CommonConfig, one_cycle, seed_everything
from ..errors import InputError


@dataclass
class TrainConfig(CommonConfig):
    """Hyper-parameters of :func:`train_classifier` (sizes in pixels); the shared ones
    (epochs, batch size, learning rate, split, device, ...) are in :class:`engine.CommonConfig`."""

    architecture: str = "resnet18-w32"
    image_size: int = 128
    label_smoothing: float = 0.05
    keep: str = "last"  # "last" epoch (unbiased validation figure) or "best" validation epoch
    skull_strip_p: float = 0.5  # probability of showing a training slice skull-stripped


def augment(x, generator):
    """Random flips, rotation, scaling, translation and gamma on a batch (N, 1, H, W) in [0, 1]."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    dev = x.device
    g = generator
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip.to(dev)[:, None, None, None], x.flip(-1), x)
    angle = (torch.rand(n, generator=g) * 30.0 - 15.0) * math.pi / 180.0
    scale = 0.85 + torch.rand(n, generator=g) * 0.30
    tx = (torch.rand(n, generator=g) * 0.16 - 0.08) * 2
    ty = (torch.rand(n, generator=g) * 0.16 - 0.08) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(dev)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gamma = torch.exp(torch.rand(n, generator=g) * (math.log(1.4) - math.log(0.7)) + math.log(0.7)).to(dev)
    return x.clamp(0, 1).pow(gamma[:, None, None, None])


def skull_strip_like(x, seed: int = 0):
    """Simulated skull-stripped versions of prepared slices (N, 1, S, S) in [0, 1].

    The head mask (value > 0.1, holes filled) is eroded by a disk of 5-10% of the side (scalp
    and skull of a whole-head slice), the rest is set to 0, intensities are re-stretched to
    the 99.5th percentile inside the mask, and the result is re-cropped to the mask's
    bounding box (4% margin) and resized back, as :func:`preprocess.prepare_slices` does
    for a skull-stripped volume. Slices whose mask would vanish are returned unchanged.
    """
    import cv2
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import binary_fill_holes

    from .preprocess import CROP_MARGIN, _grow, pad_to_square

    rng = np.random.default_rng(seed)
    out = x.clone()
    side = x.shape[-1]
    for i in range(x.shape[0]):
        img = x[i, 0].numpy()
        mask = binary_fill_holes(img > 0.1)
        r = int(round(side * rng.uniform(0.05, 0.10)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        brain = cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
        if brain.sum() < 0.05 * side * side:
            continue
        stripped = np.where(brain, img, 0.0)
        hi = np.percentile(stripped[brain], 99.5)
        stripped = np.clip(stripped / max(hi, 1e-6), 0, 1).astype(np.float32)
        rows, cols = np.flatnonzero(brain.any(1)), np.flatnonzero(brain.any(0))
        box = _grow((rows[0], rows[-1] + 1, cols[0], cols[-1] + 1), brain.shape, CROP_MARGIN)
        sq, _ = pad_to_square(stripped, box)
        out[i, 0] = F.interpolate(torch.from_numpy(sq)[None, None], size=(side, side), mode="bilinear",
                                  align_corners=False)[0, 0]
    return out


@dataclass
class Events:
    """Progress reporting: a callable receiving one JSON-ready dict per event
    (``{"event": "epoch", "epoch", "epochs", "step", "loss", "metrics", "eta_s"}``)."""

    sink: object = None

    def emit(self, **event) -> None:
        if self.sink is not None:
            self.sink(event)


def predict_batches(network, x, device, batch_size: int = 128):
    """Softmax probabilities (N, C) float32 numpy for a prepared batch tensor (N, 1, H, W)."""
    import torch

    from ..device import autocast

    network.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            with autocast(device):
                logits = network(x[i:i + batch_size].to(device))
            outs.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)


def train_classifier(data_dir, out_dir, config: TrainConfig, resume: bool = False, progress=None) -> Path:
    """Train a classifier on an ImageFolder dataset and save it as a catalogue model.

    :param data_dir: ImageFolder root (one folder per class of 2D slices).
    :param out_dir: model folder to create (replaced atomically when training succeeds).
    :param config: :class:`TrainConfig`.
    :param resume: continue from ``<out_dir>.work/last.pt`` if it exists.
    :param progress: optional callable receiving event dicts (see :class:`Events`).
    :returns: the model folder.
    :raises InputError: bad dataset (see :func:`data.scan_image_folder`) or a config that
        leaves a class without training or validation images.
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from ..catalogue import save_model
    from .preprocess import NORMALISATION_CARD
    from .data import limit_per_class_subset, load_slice_batch, scan_image_folder, stratified_split
    from ..device import autocast, resolve_device
    from ..metrics import classification_metrics
    from .networks import GRADCAM_LAYER, build_classifier
    from ..retrain import init_weights, keep_parent_split, load_parent, version_card

    cfg = config
    cfg.check()
    events = Events(progress)
    out_dir = Path(out_dir)
    work = out_dir.with_name(out_dir.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)

    paths, labels, class_names = scan_image_folder(data_dir)
    paths, labels = limit_per_class_subset(paths, labels, cfg.limit_per_class, cfg.seed)
    if len(class_names) < 2:
        raise InputError(f"{data_dir}: need at least two class folders, found {len(class_names)}")
    parent = load_parent(cfg.init_model, "classification-2d", class_names, cfg.image_size) if cfg.init_model else None
    train_idx, val_idx = stratified_split(labels, cfg.val_fraction, cfg.seed)
    train_idx, val_idx, n_kept = keep_parent_split(parent, paths, data_dir, train_idx, val_idx)
    for c, name in enumerate(class_names):
        if not np.any(labels[train_idx] == c) or not np.any(labels[val_idx] == c):
            raise InputError(f"{data_dir}: class '{name}' has too few images for a training and a validation split")

    t0 = time.time()
    x_all = load_slice_batch(paths, cfg.image_size)
    y_all = torch.as_tensor(labels)
    x_tr, y_tr = x_all[train_idx], y_all[train_idx]
    x_va, y_va = x_all[val_idx], y_all[val_idx]
    x_tr_stripped = skull_strip_like(x_tr, cfg.seed) if cfg.skull_strip_p > 0 else None
    events.emit(event="data", n_train=len(train_idx), n_val=len(val_idx), classes=class_names,
                seconds=round(time.time() - t0, 1))

    net = build_classifier(cfg.architecture, len(class_names))
    if parent is not None:
        init_weights(net, parent)
    net = net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    sched = one_cycle(opt, cfg.lr, cfg.epochs, steps_per_epoch)
    use_scaler = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.keep not in ("last", "best"):
        raise InputError(f"keep must be 'last' or 'best', got '{cfg.keep}'")
    start_epoch, best_acc, best_state, history, seconds_before = 0, -1.0, None, [], 0.0
    ckpt_path = work / "last.pt"
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ck["config"]["architecture"] != cfg.architecture or ck["class_names"] != class_names:
            raise InputError(f"{ckpt_path}: checkpoint was made with another architecture or class list")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        start_epoch, best_acc, best_state, history = ck["epoch"], ck["best_acc"], ck["best_state"], ck["history"]
        seconds_before = ck.get("train_seconds", 0.0)
        events.emit(event="resume", epoch=start_epoch)

    step = start_epoch * steps_per_epoch
    t_start = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        net.train()
        perm = torch.randperm(len(y_tr), generator=gen)
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None)
        for b in bar:
            idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb = x_tr[idx]
            if x_tr_stripped is not None:
                use = (torch.rand(len(idx), generator=gen) < cfg.skull_strip_p)[:, None, None, None]
                xb = torch.where(use, x_tr_stripped[idx], xb)
            xb = augment(xb, gen).to(device, non_blocking=True)
            yb = y_tr[idx].to(device)
            with autocast(device):
                loss = F.cross_entropy(net(xb), yb, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        probs = predict_batches(net, x_va, device)
        val_acc = float(np.mean(probs.argmax(1) == y_va.numpy()))
        if val_acc > best_acc:
            best_acc = val_acc
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        done = epoch + 1 - start_epoch
        eta = (time.time() - t_start) / done * (cfg.epochs - epoch - 1)
        rec = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_accuracy": val_acc,
               "lr": float(sched.get_last_lr()[0])}
        history.append(rec)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "epoch": epoch + 1,
                    "best_acc": best_acc, "best_state": best_state, "history": history,
                    "config": asdict(cfg), "class_names": class_names,
                    "train_seconds": seconds_before + time.time() - t_start}, tmp)
        os.replace(tmp, ckpt_path)
        # after the checkpoint, as in engine.fit: an epoch event means the epoch is saved (Cancel, then Resume)
        events.emit(event="epoch", epoch=epoch + 1, epochs=cfg.epochs, step=step, loss=rec["loss"],
                    metrics={"val_accuracy": val_acc, "best_val_accuracy": best_acc}, eta_s=round(eta, 1))

    if cfg.keep == "best":
        net.load_state_dict(best_state)
        selected = max(history, key=lambda h: h["val_accuracy"])["epoch"]
    else:
        selected = len(history)
    probs = predict_batches(net, x_va, device)
    metrics = classification_metrics(y_va.numpy(), probs.argmax(1), class_names)
    counts = {n: int(np.sum(labels == i)) for i, n in enumerate(class_names)}
    card = {
        "id": cfg.model_id or out_dir.name,
        "version": 1,
        "task": "classification-2d",
        "architecture": cfg.architecture,
        "class_names": class_names,
        "input_size": [cfg.image_size, cfg.image_size],
        "in_channels": 1,
        "intensity_normalisation": dict(NORMALISATION_CARD),
        "gradcam_layer": GRADCAM_LAYER,
        "training_data": {"folder": data_dir.name, "images_per_class": counts, "n_train": int(len(train_idx)),
                          "n_validation": int(len(val_idx)), "validation_fraction": cfg.val_fraction,
                          "split_seed": cfg.seed, "split_file": "split.json"},
        "training": {k: v for k, v in asdict(cfg).items() if k not in ("extra_card", "model_id", "device")}
        | {"device": str(device), "history": history, "selected_epoch": selected,
           "selection": "last epoch (validation images choose nothing)" if cfg.keep == "last"
           else "epoch with the best validation accuracy (validation figure is optimistic)",
           "train_seconds": round(seconds_before + time.time() - t_start, 1)},
        "metrics": {"validation": metrics},
        **cfg.extra_card,
    }
    split = {"data_folder": data_dir.name, "class_names": class_names,
             "validation": [str(paths[i].relative_to(data_dir)) for i in val_idx],
             "train": [str(paths[i].relative_to(data_dir)) for i in train_idx]}
    card = version_card(card, parent, cfg.model_id, n_kept)
    folder = save_model(net, card, out_dir, extra_files={"split.json": json.dumps(split, indent=1)})
    events.emit(event="done", model=str(folder), metrics={"val_accuracy": metrics["accuracy"]})
    return folder
