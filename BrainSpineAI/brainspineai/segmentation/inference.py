"""Inference and evaluation with a 3D segmenter (card task ``segmentation-3d``).

:func:`segment`: prepare the sequences (:mod:`brainspineai.segmentation.prepare`), MONAI
``sliding_window_inference`` (Gaussian-weighted windows of the model's patch size, given
overlap), optional flip test-time augmentation (mean of the sigmoid over no flip and a
flip along each of the three axes), threshold 0.5 per region, BraTS labelmap
(:func:`brainspineai.segmentation.data.regions_to_labelmap`) mapped back onto the reference grid.

:func:`evaluate_cases`: Dice (MONAI ``DiceMetric``; 1.0 when prediction and truth are both
empty) and the 95th-percentile Hausdorff distance in mm (MONAI
``compute_hausdorff_distance`` with the reference spacing; ``None`` when a side is empty)
per region per case, on the reference grid, and their means.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError


@dataclass
class LoadedSegmenter:
    card: dict
    folder: Path
    network: object
    device: object

    @property
    def id(self) -> str:
        return self.card["id"]

    @property
    def sequences(self) -> list:
        return list(self.card["sequences"])


def load_segmenter(ref=None, device="auto") -> LoadedSegmenter:
    """Resolve (default :data:`brainspineai.catalogue.DEFAULT_SEGMENTER_ID`), verify (sha256)
    and load a segmenter.

    :raises ModelError, ChecksumError: unknown, corrupted or incompatible model, or a model of another task."""
    from safetensors.torch import load_file

    from ..catalogue import DEFAULT_SEGMENTER_ID, read_card, resolve_model, verify_weights
    from ..device import resolve_device
    from .network import SegmenterConfig, build_segmenter

    folder = resolve_model(ref if ref else DEFAULT_SEGMENTER_ID)
    card = read_card(folder)
    if card["task"] != "segmentation-3d":
        raise ModelError(f"model '{card['id']}' is a {card['task']} model, not a 3D segmenter")
    weights = verify_weights(folder, card)
    try:
        net = build_segmenter(SegmenterConfig.from_json(card["network"]), load_clip_weights=False)
        net.load_state_dict(load_file(str(weights)))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"model '{card['id']}': weights or card do not describe a network this version builds ({exc})") from None
    dev = resolve_device(device)
    net.to(dev).eval()
    return LoadedSegmenter(card=card, folder=folder, network=net, device=dev)


def predict_probabilities(net, image: np.ndarray, patch: int, overlap: float = 0.5, device="cpu", report=None,
                          tta: bool = False, progress=None) -> np.ndarray:
    """Sigmoid probabilities ``(3, z, y, x)`` float32 (WT, TC, ET) for a prepared volume
    ``image`` ``(C, z, y, x)``."""
    import torch
    from monai.inferers import sliding_window_inference

    from ..device import autocast

    device = torch.device(device)
    was_training = net.training
    net.eval()
    x = torch.from_numpy(np.ascontiguousarray(image)).float()[None].to(device)
    with torch.no_grad():
        ie = net.image_embedding(x[0]) if net.cfg.use_bridge else None
        te = net.text_embedding(report) if (net.cfg.use_gate or net.cfg.use_attention) else None

        def predictor(batch):
            b = batch.shape[0]
            return net(batch, None if ie is None else ie[None].expand(b, -1),
                       None if te is None else te[None].expand(b, -1)).float()

        flips = [()] + ([(2,), (3,), (4,)] if tta else [])
        acc = None
        for k, dims in enumerate(flips):
            xi = torch.flip(x, dims) if dims else x
            with autocast(device):
                logits = sliding_window_inference(xi, (patch,) * 3, sw_batch_size=2, predictor=predictor,
                                                  overlap=overlap, mode="gaussian")
            prob = torch.sigmoid(logits.float())
            prob = torch.flip(prob, dims) if dims else prob
            acc = prob if acc is None else acc + prob
            if progress:
                progress(0.2 + 0.7 * (k + 1) / len(flips), f"sliding-window inference {k + 1}/{len(flips)}")
    net.train(was_training)
    return (acc / len(flips))[0].cpu().numpy()


@dataclass
class SegmentationResult:
    labelmap: object  # SimpleITK.Image, uint8, reference grid
    probabilities: np.ndarray  # (3, z, y, x) at the model spacing inside the crop
    seconds: float

    def regions(self) -> dict:
        import SimpleITK as sitk

        from .data import REGIONS, label_to_regions

        lab = sitk.GetArrayViewFromImage(self.labelmap)
        ml = float(np.prod(self.labelmap.GetSpacing())) / 1000.0
        reg = label_to_regions(lab, axis=0)
        return {r: {"voxels": int(reg[i].sum()), "volume_ml": round(float(reg[i].sum()) * ml, 3)}
                for i, r in enumerate(REGIONS)}


def segment(images: dict, model: LoadedSegmenter, report: str | None = None, overlap: float = 0.5,
            tta: bool = False, progress=None, postprocess: bool = True) -> SegmentationResult:
    """Segment one case.

    :param images: sequence name -> 3D ``SimpleITK.Image``; the model's ``sequences`` are
        required (the first is the reference grid), others are ignored.
    :param report: free text (e.g. the radiology report) for the text gate and semantic
        attention; ``None``: the default per-region descriptions.
    :param postprocess: keep the main tumour components
        (:func:`brainspineai.segmentation.prepare.keep_main_components`).
    :returns: :class:`SegmentationResult` whose labelmap has exactly the reference's geometry.
    :raises InputError: a missing sequence, NaN values, an empty volume, ``overlap`` outside [0, 1).
    """
    from .prepare import prepare, restore

    if not 0 <= overlap < 1:
        raise InputError(f"--overlap {overlap}: must be in [0, 1)")
    t0 = time.time()
    if progress:
        progress(0.0, "preparing sequences")
    prep = prepare(images, model.sequences, float(model.card["spacing_mm"]))
    if progress:
        progress(0.2, "sliding-window inference")
    prob = predict_probabilities(model.network, prep.image, int(model.card["input_size"][0]), overlap=overlap,
                                 device=model.device, report=report, tta=tta, progress=progress)
    lab = restore(prob, prep, postprocess=postprocess)
    if progress:
        progress(1.0, "done")
    return SegmentationResult(labelmap=lab, probabilities=prob, seconds=round(time.time() - t0, 2))


def region_metrics(pred_label: np.ndarray, true_label: np.ndarray, spacing_zyx) -> dict:
    """Dice and HD95 (mm) per region from two BraTS labelmaps ``(z, y, x)`` on one grid."""
    import torch
    from monai.metrics import DiceMetric, compute_hausdorff_distance

    from .data import REGIONS, label_to_regions

    p = torch.from_numpy(label_to_regions(pred_label, axis=0))[None].float()
    t = torch.from_numpy(label_to_regions(true_label, axis=0))[None].float()
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(p, t)[0]
    out = {}
    for i, r in enumerate(REGIONS):
        hd = None
        if p[0, i].any() and t[0, i].any():
            hd = float(compute_hausdorff_distance(p[:, i:i + 1], t[:, i:i + 1], include_background=True, percentile=95,
                                                  spacing=[float(s) for s in spacing_zyx])[0, 0])
        out[r] = {"dice": round(float(dice[i]), 4), "hd95_mm": None if hd is None else round(hd, 2)}
    return out


def _mean(per_case: dict) -> dict:
    from .data import REGIONS

    mean = {}
    for r in REGIONS:
        d = [c[r]["dice"] for c in per_case.values()]
        h = [c[r]["hd95_mm"] for c in per_case.values() if c[r]["hd95_mm"] is not None]
        mean[r] = {"dice": round(float(np.mean(d)), 4) if d else None,
                   "hd95_mm": round(float(np.mean(h)), 2) if h else None}
    return mean


def evaluate_network(net, card: dict, cases, device="cpu", overlap: float = 0.5, tta: bool = False,
                     postprocess: bool = True, progress=None) -> dict:
    """Dice / HD95 per region per case on the reference grid: ``{"cases": {id: {region:
    {"dice", "hd95_mm"}}}, "mean": {...}, "overlap", "tta"}``.

    :param progress: optional ``progress(fraction, message)``, per case and within each case."""
    import SimpleITK as sitk

    from ..io import read_image
    from .data import read_labelmap

    model = LoadedSegmenter(card=card, folder=Path("."), network=net, device=device)
    _check_cases(cases, model.sequences)
    per_case = {}
    for k, c in enumerate(cases):
        step = None
        if progress is not None:
            lo, hi, name = k / len(cases), (k + 1) / len(cases), f"case {k + 1}/{len(cases)} {c.case_id}: "
            step = lambda f, m="", lo=lo, hi=hi, name=name: progress(lo + (hi - lo) * float(f), name + m)  # noqa: E731
        truth = read_labelmap(c)
        res = segment({s: read_image(c.images[s]) for s in model.sequences}, model, overlap=overlap, tta=tta,
                      postprocess=postprocess, progress=step)
        per_case[c.case_id] = region_metrics(sitk.GetArrayFromImage(res.labelmap), sitk.GetArrayFromImage(truth),
                                             truth.GetSpacing()[::-1])
    return {"cases": per_case, "mean": _mean(per_case), "overlap": overlap, "tta": tta, "postprocess": postprocess}


def _check_cases(cases, sequences) -> None:
    """Every case's files are checked before any is segmented.

    :raises InputError: a case without labelmap or without one of ``sequences``; an unreadable file."""
    from ..io import check_image_file

    for c in cases:
        if c.label is None:
            raise InputError(f"case {c.case_id}: no labelmap to evaluate against")
        missing = [s for s in sequences if s not in c.images]
        if missing:
            raise InputError(f"case {c.case_id}: missing sequence {missing[0]} (the model needs {', '.join(sequences)})")
        for f in [c.images[s] for s in sequences] + [c.label]:
            if not Path(f).is_dir():
                check_image_file(f)


def training_cases(card: dict) -> list:
    """The case ids the card lists as the model's training data (``training_data.train_cases``)."""
    cases = (card.get("training_data") or {}).get("train_cases") or []
    return [str(c) for c in cases] if isinstance(cases, list) else []


def report_warning(card: dict):
    """A warning (str) when the segmenter's CLIP is the untrained ``small-random`` one: the
    report text then only passes through a random text encoder, so it does not guide the model
    in any meaningful way. ``None`` for a pre-trained CLIP or a model without a semantic level."""
    net = card.get("network") or {}
    source = (card.get("clip") or {}).get("source") or net.get("clip")
    if net.get("semantic", True) is False or source != "small-random":
        return None
    return (f"model '{card.get('id')}' uses an untrained (small-random) CLIP: the report text does not "
            "meaningfully guide this segmentation")


def evaluate_cases(data, model: LoadedSegmenter, overlap: float = 0.5, tta: bool = False,
                   cases=None, include_training: bool = False, progress=None) -> dict:
    """:func:`evaluate_network` on the labelled cases under ``data`` (see
    :func:`brainspineai.segmentation.data.discover_cases`).

    By default the cases the card lists as training data (:func:`training_cases`) are left out
    (their Dice says nothing about new patients) and named in ``"left_out_training_cases"``.

    :param cases: case ids to evaluate (``None``: all); a training case named here is kept, with
        a warning in ``"warnings"``.
    :param include_training: keep the training cases.
    :param progress: optional ``progress(fraction, message)`` (:func:`evaluate_network`).
    :raises InputError: no labelled case; an unknown id in ``cases``; only training cases left."""
    from .data import discover_cases

    found = [c for c in discover_cases(data) if c.label is not None]
    if not found:
        raise InputError(f"{data}: no case with a labelmap to evaluate against")
    _check_cases(found, model.sequences)
    train = set(training_cases(model.card))
    warnings, left_out = [], []
    if cases:
        ids = {c.case_id for c in found}
        unknown = [c for c in cases if c not in ids]
        if unknown:
            raise InputError(f"--cases: no labelled case '{unknown[0]}' under {data}")
        found = [c for c in found if c.case_id in set(cases)]
        used = sorted(train & {c.case_id for c in found})
        if used:
            warnings.append(f"{', '.join(used)}: training case(s) of model '{model.id}'; their figures are optimistic")
    elif not include_training:
        left_out = sorted(c.case_id for c in found if c.case_id in train)
        found = [c for c in found if c.case_id not in train]
        if not found:
            raise InputError(f"{data}: every labelled case ({len(left_out)}) is a training case of model "
                             f"'{model.id}'; use --include-training to evaluate them anyway")
    else:
        used = sorted(train & {c.case_id for c in found})
        if used:
            warnings.append(f"{', '.join(used)}: training case(s) of model '{model.id}'; their figures are optimistic")
    doc = evaluate_network(model.network, model.card, found, device=model.device, overlap=overlap, tta=tta,
                           progress=progress)
    return {"model": model.id, "data": str(data), **doc, "left_out_training_cases": left_out, "warnings": warnings}
