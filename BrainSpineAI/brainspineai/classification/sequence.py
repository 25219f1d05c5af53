"""MRI sequence (contrast) classifier: T1 / T1c / T2 / FLAIR from axial slices (card task ``sequence-2d``).

The same intensity handling for every source (z-scored BraTS 2015, int16 BraTS 2023, uint8
TCGA-LGG with skull), so that the network cannot tell datasets apart by their value range:

1. a volume is oriented to LPS (``SimpleITK.DICOMOrient``), so array axis 0 runs along the
   patient's superior-inferior axis and ``arr[k]`` is an axial slice;
2. foreground = voxels differing from the background value (the median of the eight corner
   voxels); intensities are mapped linearly so that the foreground's 1st / 99th percentiles
   become 0 / 1 (clipped to [0, 1]); background is 0;
3. axial slices whose foreground area is at least a quarter of the largest one are kept
   (evenly subsampled to ``max_slices``), cropped to the volume's in-plane foreground box,
   zero-padded to square and resized (area interpolation) to ``size`` x ``size``.

A 2D image is one slice through the same steps. The shipped network (card version 2,
``architecture: efficientnet-lite0``) is EfficientNet-Lite0 with frozen ImageNet weights and a
logistic regression on its pooled features folded into the last linear layer (see
``Testing/Benchmarks/train_sequence_classifier.py --efficientnet``); version 1 cards describe a
small 4-block CNN (two 3x3 conv + batch norm + ReLU, max pool; 8-16-32-64 channels, global
average pool, linear), still loadable. A volume's probabilities are the mean of its slices' softmax outputs, ``agreement`` the share
of slices voting for the volume's class.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError

SEQUENCES = ["t1", "t1c", "t2", "flair"]
DEFAULT_SEQUENCE_MODEL_ID = "mri-sequence-4class-cnn"
SEQUENCE_TASK = "sequence-2d"
SEQUENCE_LABELS = {"t1": "T1", "t1c": "T1c (contrast)", "t2": "T2", "flair": "FLAIR"}


def _normalise(arr: np.ndarray) -> np.ndarray:
    """Foreground percentile mapping (steps 2 above) of a 2D or 3D array -> float32 in [0, 1].

    :raises InputError: no foreground (a constant image)."""
    a = np.asarray(arr, dtype=np.float32)
    if a.ndim == 3:
        corners = a[np.ix_([0, -1], [0, -1], [0, -1])].ravel()
    else:
        corners = a[np.ix_([0, -1], [0, -1])].ravel()
    bg = float(np.median(corners))
    fg = np.abs(a - bg) > 1e-6 * max(1.0, float(np.abs(a).max()))
    if fg.sum() < 16:
        raise InputError("the image has no foreground (constant values): cannot tell its sequence")
    lo, hi = np.percentile(a[fg], [1.0, 99.0])
    out = np.clip((a - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    out[~fg] = 0.0
    return out.astype(np.float32), fg


def _square_resize(stack: np.ndarray, size: int) -> np.ndarray:
    """(n, h, w) -> (n, size, size): zero-pad to square (centred), area resize (torch)."""
    import torch
    import torch.nn.functional as F

    n, h, w = stack.shape
    s = max(h, w)
    sq = np.zeros((n, s, s), np.float32)
    sq[:, (s - h) // 2:(s - h) // 2 + h, (s - w) // 2:(s - w) // 2 + w] = stack
    t = torch.from_numpy(sq)[:, None]
    return F.interpolate(t, size=(size, size), mode="area")[:, 0].numpy()


def sequence_slices(image, size: int = 64, max_slices: int = 32) -> tuple:
    """Model inputs of one image (steps 1-3 of the module docstring).

    :param image: ``SimpleITK.Image`` (2D, or 3D volume) or a numpy array (2D, or 3D with axis 0 axial).
    :returns: ``(slices, indices)``: float32 ``(n, size, size)`` in [0, 1] and the axial
        indices (in the LPS-oriented volume; ``[0]`` for a 2D image).
    :raises InputError: an image without foreground.
    """
    if not isinstance(image, np.ndarray):
        import SimpleITK as sitk

        from ..io import to_grayscale

        image = to_grayscale(image)

        if image.GetDimension() == 3 and min(image.GetSize()) > 1:
            image = sitk.DICOMOrient(image, "LPS")
        arr = sitk.GetArrayFromImage(image)
    else:
        arr = image
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim not in (2, 3):
        raise InputError(f"an image of shape {arr.shape}: need one 2D slice or a 3D volume")
    norm, fg = _normalise(arr)
    if norm.ndim == 2:
        norm, fg = norm[None], fg[None]
    area = fg.reshape(fg.shape[0], -1).sum(axis=1)
    keep = np.flatnonzero(area >= 0.25 * area.max())
    if len(keep) > max_slices:
        keep = keep[np.round(np.linspace(0, len(keep) - 1, max_slices)).astype(int)]
    ys, xs = np.nonzero(fg[keep].any(axis=0))
    crop = norm[keep][:, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return _square_resize(crop, size), [int(k) for k in keep]


def build_sequence_net(n_classes: int = 4, channels=(8, 16, 32, 64), dropout: float = 0.2):
    """The small CNN (module docstring): input ``(B, 1, S, S)`` float in [0, 1] -> logits ``(B, n_classes)``."""
    import torch.nn as nn

    layers, c_in = [], 1
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                   nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                   nn.MaxPool2d(2)]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, n_classes))


def augment(x, generator):
    """Training augmentation of a batch ``(B, 1, S, S)`` (torch): random flips, rotation
    (+-15 deg), scale (0.85-1.15), gamma (0.7-1.4), and half the time a blur by 2x down/up
    sampling (low-resolution sources such as the 128 px TCGA slices)."""
    import math

    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    r = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=generator)  # noqa: E731
    ang, sc = r(-math.pi / 12, math.pi / 12), r(0.85, 1.15)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(ang) / sc * flip, -torch.sin(ang) / sc
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(ang) / sc * flip, torch.cos(ang) / sc
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    x = x.clamp(0, 1) ** r(0.7, 1.4).view(b, 1, 1, 1)
    blur = torch.rand(b, generator=generator) < 0.5
    if blur.any():
        s = x.shape[-1]
        low = F.interpolate(F.avg_pool2d(x[blur], 2), size=(s, s), mode="bilinear", align_corners=False)
        x = x.clone()
        x[blur] = low
    return x


def train_sequence_net(x, y, x_val=None, y_val=None, epochs: int = 12, batch_size: int = 64, lr: float = 3e-3,
                       seed: int = 0, channels=(8, 16, 32, 64), steps_per_epoch: int = 0, progress=None):
    """Train :func:`build_sequence_net` on slices ``x`` (float32 ``(N, S, S)``) with labels ``y``
    (int indices into :data:`SEQUENCES`); class-balanced sampling, AdamW, one-cycle schedule,
    cross-entropy with label smoothing 0.05.

    :param steps_per_epoch: batches per epoch (0: one pass over ``x``).
    :returns: ``(network in eval mode, history)``; history has the validation slice accuracy of the last epoch."""
    import torch

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = build_sequence_net(len(SEQUENCES), tuple(channels))
    xt, yt = torch.from_numpy(np.asarray(x, np.float32))[:, None], torch.from_numpy(np.asarray(y, np.int64))
    counts = np.bincount(np.asarray(y), minlength=len(SEQUENCES)).astype(float)
    w = torch.from_numpy(1.0 / np.maximum(counts, 1)[np.asarray(y)])
    steps = steps_per_epoch or max(1, len(y) // batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.05)
    history = []
    for ep in range(epochs):
        net.train()
        idx = torch.multinomial(w, steps * batch_size, replacement=True, generator=g)
        total = 0.0
        for k in range(steps):
            bi = idx[k * batch_size:(k + 1) * batch_size]
            loss = loss_fn(net(augment(xt[bi], g)), yt[bi])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        entry = {"epoch": ep + 1, "loss": round(total / steps, 4)}
        if x_val is not None and ep == epochs - 1:
            entry["val_slice_accuracy"] = round(float((slice_probabilities(net, x_val).argmax(1) == np.asarray(y_val)).mean()), 4)
        history.append(entry)
        if progress:
            progress(entry)
    return net.eval(), history


def slice_probabilities(net, slices, batch_size: int = 128, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``net`` over slices ``(n, S, S)`` -> float ``(n, n_classes)``."""
    import torch

    net.eval()
    dev = next(net.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(slices), batch_size):
            xb = torch.from_numpy(np.asarray(slices[i:i + batch_size], np.float32))[:, None].to(dev)
            out.append(torch.softmax(net(xb) / temperature, dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


@dataclass
class SequenceModel:
    """A loaded sequence classifier (``kind == "sequence"``)."""

    card: dict
    folder: Path
    network: object
    device: object
    kind: str = "sequence"
    class_names: list = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.card["id"]


def load_sequence_model(folder, card: dict, device="auto") -> SequenceModel:
    """Loader of card task ``sequence-2d`` (registered in :mod:`brainspineai.classification`).

    :raises ModelError, ChecksumError: weights that do not match the card or this network."""
    from safetensors.torch import load_file

    from ..catalogue import verify_weights
    from ..device import resolve_device

    weights = verify_weights(folder, card)
    names = list(card["class_names"])
    try:
        if card.get("architecture") == "efficientnet-lite0":  # version 2: see classification/efficientnet.py
            from .efficientnet import EfficientNetLite0

            net = EfficientNetLite0(len(names), int(card.get("in_channels", 1)))
        else:
            net = build_sequence_net(len(names), tuple(card.get("channels", (8, 16, 32, 64))))
        net.load_state_dict(load_file(str(weights)))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelError(f"model '{card['id']}': weights do not fit the sequence network ({str(exc)[:200]})") from None
    dev = resolve_device(device)
    return SequenceModel(card=card, folder=Path(folder), network=net.to(dev).eval(), device=dev, class_names=names)


@functools.lru_cache(maxsize=4)
def _default_sequence_model(device: str):
    """The shipped sequence model, loaded (and its checksums verified) once per process and
    device: every classification asks for it, a batch or the warm worker many times."""
    from ..catalogue import load_model

    return load_model(DEFAULT_SEQUENCE_MODEL_ID, device=device, task=SEQUENCE_TASK)


def detect_sequence(image, model: SequenceModel | None = None, device="auto") -> dict:
    """Predict the MRI sequence of a 2D slice or 3D volume.

    :param model: a loaded sequence model (default: the shipped :data:`DEFAULT_SEQUENCE_MODEL_ID`).
    :returns: ``{"model", "predicted", "probabilities": {name: p}, "slices", "agreement"}``
        (probabilities: mean softmax over the kept slices; agreement: share of slices whose
        top class is the predicted one).
    :raises InputError: an image without foreground.
    """
    if model is None:
        model = _default_sequence_model(str(device))
    size = int(model.card["input_size"][0])
    slices, _ = sequence_slices(image, size=size, max_slices=int(model.card.get("max_slices", 32)))
    p = slice_probabilities(model.network, slices, temperature=float(model.card.get("temperature", 1.0)))
    mean = p.mean(axis=0)
    top = int(mean.argmax())
    return {"model": model.id, "predicted": model.class_names[top],
            "probabilities": {n: round(float(v), 4) for n, v in zip(model.class_names, mean)},
            "slices": int(len(slices)), "agreement": round(float((p.argmax(1) == top).mean()), 4)}


def validated_sequences(card: dict) -> list:
    """The sequences a classifier's card says it was validated on (``validated_sequences``: a
    list, or a dict sequence -> classes); ``[]`` when the card does not say."""
    v = card.get("validated_sequences")
    return [str(k) for k in v] if isinstance(v, (list, dict)) else []


def check_sequence(image, card: dict, device="auto", model=None, predicted=None) -> tuple:
    """Detect the input's sequence and compare it with the classifier card's validated sequences.

    :param card: the card of the tumour classifier about to answer.
    :param predicted: the class it answered; when the card lists, for the detected sequence,
        the classes it was validated on (``validated_sequences`` as a dict) and this is not one
        of them, that is a warning too (e.g. "meningioma" on FLAIR, where only glioma and no
        tumour were ever seen).
    :returns: ``(sequence, warnings)``: ``{"predicted", "probabilities", "model", "agreement"}``
        (``None`` when no sequence model could be used) and a list of warning sentences.
    """
    try:
        det = detect_sequence(image, model, device)
    except (ModelError, InputError) as exc:
        return None, [f"the MRI sequence could not be detected ({exc})"]
    seq = {k: det[k] for k in ("predicted", "probabilities", "model", "agreement")}
    valid = validated_sequences(card)
    warnings = []
    if valid and det["predicted"] not in valid:
        p = det["probabilities"][det["predicted"]]
        warnings.append(f"the input looks like {SEQUENCE_LABELS.get(det['predicted'], det['predicted'])} ({p:.0%}); "
                        f"model '{card.get('id')}' was validated on "
                        f"{', '.join(SEQUENCE_LABELS.get(v, v) for v in valid)} only: its answer may be wrong")
    per_class = card.get("validated_sequences")
    if predicted is not None and isinstance(per_class, dict) and det["predicted"] in per_class:
        classes = list(per_class[det["predicted"]] or [])
        if classes and predicted not in classes:
            warnings.append(f"on {SEQUENCE_LABELS.get(det['predicted'], det['predicted'])} model '{card.get('id')}' "
                            f"was validated on {', '.join(classes)} only, not on {predicted}: its answer may be wrong")
    return seq, warnings
