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
The loop is the shared :func:`brainspineai.engine.fit` (as for AFF-CL, SimCLR and the
segmenter): AMP on CUDA, DDP under ``torchrun`` (``batch_size`` per process), checkpoints in
``<out>.work/last.pt`` after every epoch, ``resume=True`` continues from there under the same
settings only. The final model folder is written atomically (see
:func:`catalogue.save_model`), with ``split.json`` listing the validation images.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..engine import CommonConfig
from ..errors import InputError

PIPELINE = "classifier"


@dataclass
class TrainConfig(CommonConfig):
    """Hyper-parameters of :func:`train_classifier` (sizes in pixels); the shared ones
    (epochs, batch size, learning rate, split, device, ...) are in :class:`engine.CommonConfig`."""

    architecture: str = "resnet18-w32"
    image_size: int = 128
    label_smoothing: float = 0.05
    keep: str = "last"  # "last" epoch (unbiased validation figure) or "best" validation epoch
    skull_strip_p: float = 0.5  # probability of showing a training slice skull-stripped
    boxes: str = ""  # tumour-box CSV (data.read_box_table), for align_weight
    align_weight: float = 0.0  # weight of the CAM-outside-the-box loss on tumour slices with a box
    align_sizes: tuple = ()  # further input sides (px) the loss is also applied at, one drawn per step

    def extra_rules(self) -> list:
        return [("image_size", self.image_size >= 32, ">= 32"), ("keep", self.keep in ("last", "best"), "last or best"),
                ("val_fraction", 0 < self.val_fraction < 1, "between 0 and 1"),
                ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
                ("skull_strip_p", 0 <= self.skull_strip_p <= 1, "between 0 and 1"),
                ("align_weight", self.align_weight >= 0, ">= 0"),
                ("boxes", bool(self.boxes) or self.align_weight == 0, "a tumour-box CSV when align_weight > 0"),
                ("boxes", not self.boxes or Path(self.boxes).is_file(), "an existing file"),
                ("align_sizes", all(int(v) >= 32 for v in self.align_sizes), "sides >= 32"),
                ("align_sizes", not self.align_sizes or self.align_weight > 0, "used with align_weight > 0")]


def augment(x, generator, masks=None):
    """Random flips, rotation, scaling, translation and gamma on a batch (N, 1, H, W) in [0, 1];
    ``masks`` (N, 1, H, W), if given, get the same flips and affine maps (no gamma) and
    ``(x, masks)`` is returned."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    dev = x.device
    g = generator
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip.to(dev)[:, None, None, None], x.flip(-1), x)
    if masks is not None:
        masks = torch.where(flip.to(dev)[:, None, None, None], masks.flip(-1), masks)
    angle = (torch.rand(n, generator=g) * 30.0 - 15.0) * math.pi / 180.0
    scale = 0.85 + torch.rand(n, generator=g) * 0.30
    tx = (torch.rand(n, generator=g) * 0.16 - 0.08) * 2
    ty = (torch.rand(n, generator=g) * 0.16 - 0.08) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1).to(dev)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gamma = torch.exp(torch.rand(n, generator=g) * (math.log(1.4) - math.log(0.7)) + math.log(0.7)).to(dev)
    x = x.clamp(0, 1).pow(gamma[:, None, None, None])
    if masks is None:
        return x
    return x, F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def box_masks(boxes, size: int):
    """float32 (N, 1, size, size): 1 inside each box (x0, y0, x1, y1 as fractions; NaN rows: all 0)."""
    import torch

    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    b = torch.nan_to_num(torch.as_tensor(boxes, dtype=torch.float32), nan=-1.0)
    inx = (t[None, :] >= b[:, 0:1]) & (t[None, :] <= b[:, 2:3])
    iny = (t[None, :] >= b[:, 1:2]) & (t[None, :] <= b[:, 3:4])
    return (iny[:, :, None] & inx[:, None, :]).float()[:, None]


def cam_outside_box(features, fc_weight, labels, masks):
    """The explanation-alignment loss, per image: the share of the class evidence lying outside
    the tumour box, in the spirit of "right for the right reasons" (Ross et al., IJCAI 2017).
    The evidence is the class activation map (CAM, Zhou et al., CVPR 2016: ``sum_c W[y, c] A_c``
    at the last stage, exact for a network that average-pools it into ``fc``), turned into a
    spatial distribution by a softmax over its cells (so that the loss has a gradient even where
    the map is negative), weighted by the fraction of each cell the box covers.

    :param features: (N, C, h, w) last-stage map; :param fc_weight: (K, C);
    :param labels: int64 (N,); :param masks: (N, 1, H, W) box masks in [0, 1].
    :returns: float tensor (N,) in [0, 1].
    """
    import torch
    import torch.nn.functional as F

    cam = torch.einsum("nchw,nc->nhw", features.float(), fc_weight[labels].float())
    p = torch.softmax(cam.flatten(1), dim=1).view_as(cam)
    m = F.adaptive_avg_pool2d(masks, features.shape[-2:])[:, 0]
    return (p * (1 - m)).sum((1, 2))


def _fine_views(paths, train_idx, boxes_tr, cfg):
    """For ``align_sizes``: the training slices that have a box, prepared at the largest side
    (float32 (M, 1, S, S)) and a map from training index to row (-1: none); None when unused."""
    if not cfg.align_sizes or boxes_tr is None:
        return None
    import torch

    from .data import load_slice_batch

    has = torch.isfinite(boxes_tr[:, 0]).numpy()
    row = np.full(len(train_idx), -1, dtype=np.int64)
    row[has] = np.arange(int(has.sum()))
    x = load_slice_batch([paths[i] for i in np.asarray(train_idx)[has]], max(int(v) for v in cfg.align_sizes))
    return {"x": x, "row": torch.from_numpy(row), "sizes": [int(v) for v in cfg.align_sizes]}


def _fine_alignment(net, captured, fine, idx, y_tr, boxes_tr, gen, device, autocast=None):
    """The alignment loss of the selected training slices ``idx`` at an input side drawn from
    ``fine["sizes"]``, as the finer scales of :func:`explain.multiscale_cam` see them; batch
    norm uses its running statistics there, so the 128 px statistics are not mixed. ``autocast``:
    a context for the forward only (the map and the loss stay in float32)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    side = fine["sizes"][int(torch.randint(len(fine["sizes"]), (1,), generator=gen))]
    x = fine["x"][fine["row"][idx]]
    if x.shape[-1] != side:
        x = F.interpolate(x, size=(side, side), mode="area")
    x, m = augment(x, gen, box_masks(boxes_tr[idx], side))
    bns = [mod for mod in net.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.training]
    for mod in bns:
        mod.eval()
    try:
        with (autocast or contextlib.nullcontext)():
            net(x.to(device))
    finally:
        for mod in bns:
            mod.train()
    return cam_outside_box(captured["a"], net.fc.weight, y_tr[idx].to(device), m.to(device)).mean()


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


class BestEpoch:
    """The epoch with the best validation accuracy so far (``keep="best"``), a stateful
    object of :func:`engine.fit`, so that it survives a resume: ``acc`` (-1 before the first
    epoch) and, when ``keep_weights``, a CPU copy of that epoch's weights."""

    def __init__(self, network, keep_weights: bool):
        self.network, self.keep_weights = network, keep_weights
        self.acc, self.state = -1.0, None

    def update(self, acc: float) -> None:
        if acc > self.acc:
            self.acc = float(acc)
            if self.keep_weights:
                self.state = {k: v.detach().cpu().clone() for k, v in self.network.state_dict().items()}

    def state_dict(self) -> dict:
        return {"acc": self.acc, "state": self.state if self.state is not None else {}}

    def load_state_dict(self, state: dict) -> None:
        self.acc, self.state = float(state["acc"]), (state["state"] or None)


def train_classifier(data_dir, out_dir, config: TrainConfig, resume: bool = False, progress=None) -> Path:
    """Train a classifier on an ImageFolder dataset and save it as a catalogue model.

    The loop is :func:`brainspineai.engine.fit` (Lightning Fabric: AMP on CUDA, DDP under
    ``torchrun`` with every process training on its share and only process 0 writing;
    checkpoints in ``<out_dir>.work/last.pt``, loaded with ``weights_only=True``; a lock on
    the run). Events: ``data``, ``resume``, ``step``, ``epoch`` (after its checkpoint, with
    ``metrics`` ``val_accuracy`` and ``best_val_accuracy``) and ``done``, each with
    ``"pipeline": "classifier"``.

    :param data_dir: ImageFolder root (one folder per class of 2D slices).
    :param out_dir: model folder to create (replaced atomically when training succeeds).
    :param config: :class:`TrainConfig`.
    :param resume: continue from ``<out_dir>.work/last.pt`` if it exists; refused (before
        the images are loaded) when it was made with other settings or data.
    :param progress: optional callable receiving event dicts (JSON-ready).
    :returns: the model folder.
    :raises InputError: bad options or dataset (see :func:`data.scan_image_folder`), a
        config that leaves a class without training or validation images, a checkpoint of
        other settings or an unsafe one, another run on ``out_dir``.
    :raises BrainSpineAIError: a checkpoint or the model could not be written.
    :raises checkpoint.Terminated: SIGTERM (the last finished epoch's checkpoint is kept).
    """
    from .. import engine
    from ..checkpoint import run_lock

    config.check()
    with run_lock(out_dir):
        return _train(Path(data_dir), Path(out_dir), config, resume, progress, engine.make_fabric(config.device))


def _train(data_dir: Path, out_dir: Path, cfg: TrainConfig, resume: bool, progress, fabric) -> Path:
    import torch
    import torch.nn.functional as F

    from .. import engine
    from ..checkpoint import load_for_resume
    from ..retrain import init_weights, keep_parent_split, load_parent, version_card
    from .data import GROUPS_FILE, limit_per_class_subset, load_slice_batch, scan_image_folder, split_dataset
    from .networks import GRADCAM_LAYER, PRETRAINED, build_classifier
    from .predict import predict_batches

    engine.seed_everything(cfg.seed)
    paths, labels, class_names = scan_image_folder(data_dir)
    paths, labels = limit_per_class_subset(paths, labels, cfg.limit_per_class, cfg.seed)
    if len(class_names) < 2:
        raise InputError(f"{data_dir}: need at least two class folders, found {len(class_names)}")
    conf = {k: v for k, v in asdict(cfg).items() if k not in ("extra_card", "model_id")}
    if not conf["align_sizes"]:  # so that checkpoints made before the option existed still resume
        del conf["align_sizes"]
    config = {"data": str(data_dir.resolve()), "class_names": list(class_names), "n_images": len(paths), **conf}
    if resume:  # refuse other settings before the images are loaded (fit checks again)
        load_for_resume(out_dir, PIPELINE, config, fabric.world_size)
    parent = load_parent(cfg.init_model, "classification-2d", class_names, cfg.image_size) if cfg.init_model else None
    train_idx, val_idx, by_group = split_dataset(data_dir, paths, labels, cfg.val_fraction, cfg.seed)
    train_idx, val_idx, n_kept = keep_parent_split(parent, paths, data_dir, train_idx, val_idx)
    for c, name in enumerate(class_names):
        if not np.any(labels[train_idx] == c) or not np.any(labels[val_idx] == c):
            raise InputError(f"{data_dir}: class '{name}' has too few images for a training and a validation split")

    t0 = time.time()
    x_all, geoms = load_slice_batch(paths, cfg.image_size, return_geometry=True)
    y_all = torch.as_tensor(labels)
    boxes_tr = None
    if cfg.align_weight > 0:
        from .data import prepared_boxes, read_box_table

        boxes_tr = torch.from_numpy(prepared_boxes(paths, data_dir, geoms, read_box_table(cfg.boxes)))[train_idx]
        if not torch.isfinite(boxes_tr[:, 0]).any():
            raise InputError(f"{cfg.boxes}: none of its boxes names a training image of {data_dir}")
    if cfg.align_sizes and fabric.world_size > 1:
        raise InputError("--align-sizes: a second forward per step is not supported under DDP; train in one process")
    fine = _fine_views(paths, train_idx, boxes_tr, cfg)
    x_tr, y_tr = x_all[train_idx], y_all[train_idx]
    x_va, y_va = x_all[val_idx], y_all[val_idx]
    x_tr_stripped = skull_strip_like(x_tr, cfg.seed) if cfg.skull_strip_p > 0 else None
    if progress and fabric.is_global_zero:
        progress({"event": "data", "pipeline": PIPELINE, "n_train": len(train_idx), "n_val": len(val_idx),
                  "classes": class_names, "seconds": round(time.time() - t0, 1)})

    net = build_classifier(cfg.architecture, len(class_names), pretrained=parent is None and cfg.architecture in PRETRAINED)
    if parent is not None:
        init_weights(net, parent)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt = fabric.setup(net, opt)
    steps = engine.steps_per_epoch(len(train_idx), cfg.batch_size, fabric.world_size)
    sched = engine.one_cycle(opt, cfg.lr, cfg.epochs, steps)
    best = BestEpoch(net, keep_weights=cfg.keep == "best")

    captured, hook = {}, None
    if boxes_tr is not None:  # the last stage's map, for the alignment loss (removed after fitting)
        hook = net.get_submodule(GRADCAM_LAYER).register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))

    def step(idx, gen):
        xb = x_tr[idx]
        use = torch.zeros(len(idx), 1, 1, 1, dtype=torch.bool)
        if x_tr_stripped is not None:
            use = (torch.rand(len(idx), generator=gen) < cfg.skull_strip_p)[:, None, None, None]
            xb = torch.where(use, x_tr_stripped[idx], xb)
        if boxes_tr is None:
            xb = augment(xb, gen).to(fabric.device, non_blocking=True)
        else:
            xb, mb = augment(xb, gen, box_masks(boxes_tr[idx], xb.shape[-1]))
            xb, mb = xb.to(fabric.device, non_blocking=True), mb.to(fabric.device)
        yb = y_tr[idx].to(fabric.device)
        with fabric.autocast():
            loss = F.cross_entropy(model(xb).float(), yb, label_smoothing=cfg.label_smoothing)
        if boxes_tr is None:
            return loss, {}
        # boxes of re-cropped (skull-stripped) slices no longer fit: those are left out
        sel = (torch.isfinite(boxes_tr[idx][:, 0]) & ~use.view(-1)).to(fabric.device)
        if not bool(sel.any()):
            return loss, {"align": 0.0}
        out = cam_outside_box(captured["a"][sel], net.fc.weight, yb[sel], mb[sel]).mean()
        if fine is not None:
            out = (out + _fine_alignment(net, captured, fine, idx[sel.cpu()], y_tr, boxes_tr, gen, fabric.device,
                                         fabric.autocast)) / 2
        return loss + cfg.align_weight * out, {"align": float(out.detach())}

    def evaluate():
        acc = float(np.mean(predict_batches(net, x_va, fabric.device).argmax(1) == y_va.numpy()))
        best.update(acc)
        return {"val_accuracy": acc, "best_val_accuracy": best.acc}

    result = engine.fit(pipeline=PIPELINE, fabric=fabric, model=model, optimizer=opt, scheduler=sched,
                        n_train=len(train_idx), batch_size=cfg.batch_size, epochs=cfg.epochs, step_fn=step,
                        eval_fn=evaluate, out_dir=out_dir, config=config, seed=cfg.seed, resume=resume,
                        progress=progress, stateful={"best": best}, log_every=max(1, min(10, steps)))
    if hook is not None:
        hook.remove()
        captured.clear()
    if not fabric.is_global_zero:
        return out_dir
    history = result["history"]
    if cfg.keep == "best" and best.state is not None:
        net.load_state_dict(best.state)
        selected = max(history, key=lambda h: h["val_accuracy"])["epoch"]
    else:
        selected = len(history)
    probs = predict_batches(net, x_va, fabric.device)
    card = _card(cfg, out_dir, data_dir, class_names, labels, train_idx, val_idx, y_va.numpy(), probs, history,
                 selected, result, fabric)
    split = {"data_folder": data_dir.name, "class_names": class_names,
             "validation": [str(paths[i].relative_to(data_dir)) for i in val_idx],
             "train": [str(paths[i].relative_to(data_dir)) for i in train_idx]}
    if by_group:
        card["training_data"]["split_groups"] = GROUPS_FILE + " (every image of a group, e.g. a patient, on one side)"
    if cfg.align_weight > 0:
        card["training"]["alignment"] = (
            "cross-entropy + align_weight x the share of the class activation map (CAM, Zhou et al. 2016) at "
            f"{GRADCAM_LAYER} outside the tumour box, on tumour slices with a box in {Path(cfg.boxes).name} "
            "(right for the right reasons, Ross et al. 2017); skull-stripped views left out"
            + (f"; averaged with the same loss at an input side drawn per step from {list(cfg.align_sizes)} px "
               "(batch norm frozen there), for the finer heatmap scales" if cfg.align_sizes else ""))
    if parent is None and cfg.architecture in PRETRAINED:
        from .efficientnet import PRETRAINED_CARD

        card["pretrained"] = dict(PRETRAINED_CARD)
    card = version_card(card, parent, cfg.model_id, n_kept)
    folder = _save(net, card, out_dir, {"split.json": json.dumps(split, indent=1)})
    if progress:
        progress({"event": "done", "pipeline": PIPELINE, "model": str(folder),
                  "metrics": {"val_accuracy": card["metrics"]["validation"]["accuracy"]}})
    return folder


def _card(cfg, out_dir, data_dir, class_names, labels, train_idx, val_idx, y_va, probs, history, selected, result,
          fabric) -> dict:
    from ..engine import precision_for
    from ..metrics import classification_metrics
    from .networks import GRADCAM_LAYER
    from .preprocess import NORMALISATION_CARD

    counts = {n: int(np.sum(labels == i)) for i, n in enumerate(class_names)}
    training = {k: v for k, v in asdict(cfg).items() if k not in ("extra_card", "model_id", "device")}
    training.update({"device": str(fabric.device), "processes": fabric.world_size,
                     "precision": precision_for(fabric.device.type), "history": history, "selected_epoch": selected,
                     "selection": "last epoch (validation images choose nothing)" if cfg.keep == "last"
                     else "epoch with the best validation accuracy (validation figure is optimistic)",
                     "train_seconds": result["train_seconds"], "images_per_second": result["images_per_second"]})
    return {
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
        "training": training,
        "metrics": {"validation": classification_metrics(y_va, probs.argmax(1), class_names)},
        **cfg.extra_card,
    }


def _save(net, card: dict, out_dir: Path, extra_files: dict) -> Path:
    """:func:`catalogue.save_model`, a write error (e.g. a full disk) as one line."""
    from ..catalogue import save_model
    from ..errors import BrainSpineAIError

    try:
        return save_model(net, card, out_dir, extra_files=extra_files)
    except OSError as exc:
        raise BrainSpineAIError(f"cannot write the model folder {out_dir}: "
                                f"{exc.strerror or exc}; the checkpoint in {out_dir.name}.work is kept "
                                "(--resume writes the model again)") from None
