"""Training the CLIP-guided 3D U-Net (``brainspineai train segmenter``).

Cases are prepared once (:func:`brainspineai.segmentation.prepare.prepare`, at the model spacing) and
cached in memory (``monai.data.CacheDataset``); every optimiser step draws random patches
(``RandCropByPosNegLabeld``, positive:negative 2:1, after padding to the patch size), random
flips on the three axes and random intensity scale and shift. Loss: MONAI ``DiceCELoss``
(sigmoid, i.e. soft Dice + binary cross-entropy per region WT, TC, ET) on the final logits
plus the deep supervision heads (weights 1, 0.5, 0.25, labels resized nearest). CLIP is
frozen: the 3D-2D image embedding of each case is computed once; the text embedding of each
step is one of a few generic glioma descriptions (the training data carries no reports).

The loop is :func:`brainspineai.engine.fit` (Lightning Fabric: AMP on CUDA, DDP under
torchrun, per-epoch checkpoints in ``<out>.work``, ``resume``, step/epoch events). The
last ``val_cases`` cases (sorted by id) are held out; their Dice / HD95 on the reference grid
go into the model card (``metrics.held_out``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine import CommonConfig
from ..errors import InputError

PIPELINE = "segmenter"


@dataclass
class SegTrainConfig(CommonConfig):
    """Settings of ``train segmenter`` (sizes in voxels at ``spacing`` mm).

    ``samples_per_epoch``: patches drawn per epoch (0: 8 per training case)."""

    epochs: int = 30
    batch_size: int = 2
    lr: float = 3e-3
    weight_decay: float = 1e-5
    sequences: tuple = ("flair", "t1ce")
    patch_size: int = 48
    spacing: float = 2.0
    val_cases: int = 1
    samples_per_epoch: int = 0
    channels: tuple = (16, 32, 64, 128)
    semantic: bool = True
    image_bridge: bool = True
    text_gate: bool = True
    attention: bool = True
    clip_model: str = "small-random"
    init_model: str = ""
    overlap: float = 0.25
    eval_every: int = 0

    def extra_rules(self) -> list:
        from .data import SEQUENCES

        return [("patch_size", self.patch_size >= 16 and self.patch_size % 8 == 0, "a multiple of 8, >= 16"),
                ("spacing", self.spacing > 0, "> 0 mm"), ("val_cases", self.val_cases >= 0, ">= 0"),
                ("samples_per_epoch", self.samples_per_epoch >= 0, ">= 0"),
                ("sequences", len(self.sequences) > 0 and set(self.sequences) <= set(SEQUENCES)
                 and len(set(self.sequences)) == len(self.sequences), f"distinct names among {', '.join(SEQUENCES)}")]


def load_case_arrays(case, sequences, spacing):
    """Read a case and prepare it: (:class:`brainspineai.segmentation.prepare.Prepared`, images dict)."""
    from ..io import read_image
    from .data import read_labelmap
    from .prepare import prepare

    missing = [s for s in sequences if s not in case.images]
    if missing:
        raise InputError(f"case {case.case_id}: missing sequence {missing[0]} (training asks for {', '.join(sequences)})")
    images = {s: read_image(case.images[s]) for s in sequences}
    label = read_labelmap(case) if case.label is not None else None
    return prepare(images, sequences, spacing, label=label)


def _transforms(patch: int, seed: int):
    from monai.transforms import (Compose, RandCropByPosNegLabeld, RandFlipd, RandScaleIntensityd,
                                  RandShiftIntensityd, SpatialPadd)

    t = Compose([
        SpatialPadd(keys=["image", "label"], spatial_size=(patch,) * 3),
        RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=(patch,) * 3, pos=2, neg=1,
                               num_samples=1, image_key="image", image_threshold=0.0, allow_smaller=True),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=1),
        RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ])
    t.set_random_state(seed=seed)
    return t


def train_segmenter(data, out, cfg: SegTrainConfig, resume: bool = False, progress=None) -> Path:
    """Train a segmenter on the cases under ``data`` and write the model folder ``out``,
    holding the lock of ``out`` for the whole run (:func:`brainspineai.checkpoint.run_lock`:
    a second run on it is refused, a killed run's leftovers removed, SIGTERM raises
    :class:`brainspineai.checkpoint.Terminated` once the files being written are removed).
    See :func:`_train_segmenter`."""
    from ..checkpoint import run_lock

    with run_lock(out):
        return _train_segmenter(data, out, cfg, resume, progress)


def _train_segmenter(data, out, cfg: SegTrainConfig, resume: bool = False, progress=None) -> Path:
    """Train a segmenter on the cases under ``data`` and write the model folder ``out``.

    :returns: the model folder (card task ``segmentation-3d``).
    :raises InputError: bad options, too few labelled cases, a case missing a sequence, a
        parent model (``init_model``) of another task or incompatible layout.
    """
    import torch
    import torch.nn.functional as F
    from monai.data import CacheDataset
    from monai.losses import DiceCELoss

    from ..catalogue import save_model
    from ..checkpoint import load_for_resume
    from ..retrain import init_weights, load_parent, version_card
    from ..engine import fit, make_fabric, one_cycle, seed_everything, steps_per_epoch
    from .data import LABELS, REGIONS, discover_cases, label_to_regions
    from .network import ARCHITECTURE, TRAIN_TEXTS, SegmenterConfig, build_segmenter, count_parameters

    cfg.check()
    out = Path(out)
    cases = [c for c in discover_cases(data) if c.label is not None]
    if len(cases) < cfg.val_cases + 1:
        raise InputError(f"{data}: {len(cases)} labelled case(s); need at least {cfg.val_cases + 1} "
                         f"(--val-cases {cfg.val_cases} held out)")
    parent = load_parent(cfg.init_model, "segmentation-3d") if cfg.init_model else None
    # a parent's held-out cases stay held out, so the new version is not measured on cases it was trained on
    held = set((parent.card.get("training_data") or {}).get("held_out_cases") or []) if parent else set()
    kept = [c for c in cases if c.case_id in held]
    rest = [c for c in cases if c.case_id not in held]
    n_new_val = max(cfg.val_cases - len(kept), 0)
    if len(rest) <= n_new_val:
        raise InputError(f"{data}: no labelled case left for training once {len(kept) + n_new_val} are held out")
    train_cases = rest[:len(rest) - n_new_val]
    val_cases = kept + rest[len(rest) - n_new_val:]
    net_cfg = SegmenterConfig(in_channels=len(cfg.sequences), channels=tuple(cfg.channels), semantic=cfg.semantic,
                              image_bridge=cfg.image_bridge, text_gate=cfg.text_gate, attention=cfg.attention,
                              clip=cfg.clip_model)
    if parent is not None:
        if list(parent.card["sequences"]) != list(cfg.sequences):
            raise InputError(f"--init-model {cfg.init_model}: trained on {', '.join(parent.card['sequences'])}, "
                             f"not {', '.join(cfg.sequences)}; use --sequences {' '.join(parent.card['sequences'])}")
        net_cfg = SegmenterConfig.from_json(parent.card["network"])
    seed_everything(cfg.seed)
    fabric = make_fabric(cfg.device)
    t0 = time.time()
    prepared = [load_case_arrays(c, cfg.sequences, cfg.spacing) for c in train_cases]
    items = [{"image": p.image, "label": label_to_regions(p.label, axis=0)} for p in prepared]
    dataset = CacheDataset(items, transform=_transforms(cfg.patch_size, cfg.seed + fabric.global_rank), cache_rate=1.0,
                           num_workers=0, progress=False)
    prep_seconds = time.time() - t0

    net = build_segmenter(net_cfg, load_clip_weights=parent is None)
    if parent is not None:
        init_weights(net, parent)
    dev = fabric.device
    with torch.no_grad():
        net.to(dev)
        img_embs = [net.image_embedding(torch.from_numpy(p.image).to(dev)) for p in prepared]
        txt_embs = net.encode_text(TRAIN_TEXTS) if net_cfg.use_gate or net_cfg.use_attention else None
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_train = cfg.samples_per_epoch or 8 * len(items)
    steps = steps_per_epoch(n_train, cfg.batch_size, fabric.world_size)
    scheduler = one_cycle(optimizer, cfg.lr, cfg.epochs, steps)
    model, optimizer = fabric.setup(net, optimizer)
    loss_fn = DiceCELoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
    weights = [1.0] + list(net_cfg.deep_supervision)

    def step_fn(idx, gen):
        imgs, labs, ies, tes = [], [], [], []
        for i in idx.tolist():
            case = i % len(items)
            s = dataset[case][0]
            imgs.append(torch.as_tensor(np.asarray(s["image"])))
            labs.append(torch.as_tensor(np.asarray(s["label"])))
            if img_embs[case] is not None:
                ies.append(img_embs[case])
            if txt_embs is not None:
                tes.append(txt_embs[int(torch.randint(len(txt_embs), (1,), generator=gen))])
        x = torch.stack(imgs).float().to(fabric.device)
        y = torch.stack(labs).float().to(fabric.device)
        ie = torch.stack(ies) if ies and net_cfg.use_bridge else None
        te = torch.stack(tes) if tes else None
        outs = model(x, ie, te)
        loss = 0.0
        for w, o in zip(weights, outs):
            target = y if o.shape[2:] == y.shape[2:] else F.interpolate(y, size=o.shape[2:], mode="nearest")
            loss = loss + w * loss_fn(o.float(), target)
        return loss / sum(weights[:len(outs)]), {}

    every = cfg.eval_every or max(1, cfg.epochs // 5)
    counter = {"epoch": 0}
    config = {"data": str(Path(data).resolve()), **{k: (list(v) if isinstance(v, tuple) else v)
                                                      for k, v in cfg.__dict__.items() if k not in ("extra_card",)}}
    ck = load_for_resume(out, PIPELINE, config, fabric.world_size) if resume else None  # checked, weights_only
    if ck is not None:  # epochs already done, so that evaluation keeps its schedule
        counter["epoch"] = int(ck["epoch"])
        del ck
    val_prepared = [load_case_arrays(c, cfg.sequences, cfg.spacing) for c in val_cases]

    def eval_fn():
        counter["epoch"] += 1
        if not val_prepared or (counter["epoch"] % every and counter["epoch"] != cfg.epochs):
            return {}
        from .inference import predict_probabilities

        dices = []
        for p in val_prepared:
            prob = predict_probabilities(net, p.image, cfg.patch_size, overlap=cfg.overlap, device=fabric.device)
            gt = label_to_regions(p.label, axis=0).astype(bool)
            pr = prob > 0.5
            dices.append([_dice(pr[k], gt[k]) for k in range(3)])
        d = np.mean(dices, axis=0)
        return {f"val_dice_{r}": round(float(v), 4) for r, v in zip(REGIONS, d)}

    result = fit(pipeline=PIPELINE, fabric=fabric, model=model, optimizer=optimizer, scheduler=scheduler,
                 n_train=n_train, batch_size=cfg.batch_size, epochs=cfg.epochs, step_fn=step_fn, eval_fn=eval_fn,
                 out_dir=out, config=config, seed=cfg.seed, resume=resume, progress=progress,
                 log_every=max(1, min(5, steps)))
    if fabric.global_rank != 0:
        return out
    net.eval()
    card = {
        "id": cfg.model_id or out.name, "version": 1,
        "task": "segmentation-3d", "architecture": ARCHITECTURE, "class_names": list(REGIONS),
        "regions": {"WT": "label > 0", "TC": "label in {1, 4}", "ET": "label == 4"},
        "labels": {str(k): v for k, v in LABELS.items()}, "sequences": list(cfg.sequences),
        "reference": cfg.sequences[0], "input_size": [cfg.patch_size] * 3, "in_channels": len(cfg.sequences),
        "spacing_mm": cfg.spacing, "network": net_cfg.to_json(),
        "clip": _clip_provenance(net_cfg.clip, net if net_cfg.semantic else None),
        "intensity_normalisation": {"method": "z-score inside the brain mask (voxels differing from the corner "
                                              "background value) after clipping to the 0.5/99.5 percentiles",
                                    "crop": "foreground bounding box + 8 mm"},
        "postprocess": "threshold 0.5 per region; keep the largest WT component and any of >= 20% of its size; "
                       "TC and ET only inside the kept WT",
        "parameters": count_parameters(net), "trainable_parameters": count_parameters(net, True),
        "training_data": {"root": str(Path(data).resolve()), "train_cases": [c.case_id for c in train_cases],
                          "held_out_cases": [c.case_id for c in val_cases], "n_train": len(train_cases),
                          "n_held_out": len(val_cases)},
        "training": {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "patch_size": cfg.patch_size,
                     "samples_per_epoch": n_train, "loss": "DiceCE (sigmoid) + deep supervision (1, 0.5, 0.25)",
                     "seed": cfg.seed, "device": str(fabric.device), "processes": fabric.world_size,
                     "train_seconds": result["train_seconds"],
                     "prepare_seconds": round(prep_seconds, 1), "history": result["history"]},
        "metrics": {},
    }
    card = version_card(card, parent, explicit_id=cfg.model_id, parent_validation_kept=len(kept))
    card.update(cfg.extra_card)
    if val_cases:
        from .inference import evaluate_network

        card["metrics"]["held_out"] = evaluate_network(net, card, val_cases, device=fabric.device)
        card["metrics"]["held_out_no_postprocess"] = evaluate_network(net, card, val_cases, device=fabric.device,
                                                                      postprocess=False)
    return save_model(net, card, out)


def _clip_provenance(spec: str, net) -> dict:
    from .network import SMALL_CLIP

    d = {"source": spec, "frozen": True, "weights_in_model": net is not None}
    if spec == "small-random":
        d.update({"note": "small randomly initialised open_clip CLIP built locally (torch seed 0), no pre-training",
                  "config": SMALL_CLIP})
    if net is not None:
        d["embed_dim"] = int(net.embed_dim)
    return d


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    s = pred.sum() + gt.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(pred, gt).sum() / s)
