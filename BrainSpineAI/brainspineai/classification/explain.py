"""Class activation maps of a 2D classifier: activations and gradients of one stage come
from MONAI's hooks (``monai.visualize.class_activation_maps.ModelWithHooks``); the channel
weighting follows the definitions of the ``grad-cam`` package (``pytorch_grad_cam`` 1.5,
J. Gildenblat, https://github.com/jacobgil/pytorch-grad-cam), which is not a dependency: it
is sdist-only for Slicer's Python, requires ``opencv-python-headless`` beside this project's
``opencv-contrib-python-headless`` (two ``cv2`` in one environment) and imports
``matplotlib.pyplot`` on import. ``Testing/Python/test_localisation.py`` checks the maps
against it where it is installed.

Methods (:data:`METHODS`), all computed on one convolutional stage of the network:

- ``gradcam``: Grad-CAM (Selvaraju et al., ICCV 2017): channel weights = spatial mean of
  the gradient.
- ``gradcam++``: Grad-CAM++ (Chattopadhay et al., WACV 2018): weights from positive
  gradients with second-order terms.
- ``hirescam``: HiResCAM (Draelos & Carin 2020): activations times gradients, summed over
  channels (no spatial averaging; faithful for a pooled linear head).
- ``layercam``: LayerCAM (Jiang et al., IEEE TIP 2021): activations times positive
  gradients; useful at earlier stages (finer maps).

A model's method and stage come from :func:`heatmap_choice`: an explicit argument, else the
card's ``heatmap`` entry (``{"method", "layer"[, "input_sizes"]}``), else :data:`DEFAULT_HEATMAPS`
keyed by model id (chosen on validation data by ``Testing/Benchmarks/model_report.py``, kept in
code so that a pinned shipped card never changes), else Grad-CAM at ``card["gradcam_layer"]``.

Explanation scales (:func:`heatmap_sizes`, :func:`multiscale_cam`): the class probabilities
always come from the slice prepared at the model's own ``input_size``. The map may combine the
same method on the same slice prepared at several sides: the product of the maps, each scaled
by its maximum over the batch. At 128 px EfficientNet-Lite0's last stage is a 4 x 4 grid (32 px
cells, about 45 mm of a brain), at 192 px 6 x 6, at 256 px 8 x 8. The product keeps heat only
where the decision-scale map (128 px) and the finer ones agree, so the finer scales sharpen the
decision's own evidence instead of replacing it (multi-scale CAM; cf. the input-scale fusion of
LayerCAM, Jiang et al., IEEE TIP 2021). On tumour slices the network's class at 192 px agrees
with its class at 128 px on 64% of BraTS 2015 and 89% of TCGA-LGG validation slices, which is
why the 128 px map stays in the product. Cost: one CAM pass per side (the default model's
128 + 192 + 256 px: about 7x the pixels of 128 px alone).

Across slices (volumes only; :func:`heatmap_slice_sigma`, :func:`smooth_across_slices`): a
volume's map is smoothed along the axial stack by a Gaussian of ``slice_sigma`` slices and then
cut to each slice's head again. A tumour's evidence continues over neighbouring slices; a peak
that one slice alone shows (context the network uses, often in the other hemisphere) is
weakened. Heat reaches about two sigmas beyond the tumour's first and last slices.
"""
from __future__ import annotations

import numpy as np

METHODS = ("gradcam", "gradcam++", "hirescam", "layercam")
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "hirescam": "HiResCAM", "layercam": "LayerCAM"}

# model id -> (method, layer[, explanation input sides in px]), chosen by the localisation metrics
# on the model's validation slices and on labelled volumes (README "Heatmaps";
# Testing/Benchmarks/model_report.py --compare).
DEFAULT_HEATMAPS = {
    "brain-tumor-4class-resnet18w32": ("gradcam++", "layer2"),
    # chosen on the 12 TCGA-LGG validation patients of its split (pointing game, mean over FLAIR /
    # T1 / T1c; version 1: layercam@layer4 0.470, gradcam++@layer4 0.464, gradcam@layer4 0.440,
    # finer stages blocks.4 / blocks.2 0.10-0.39; version 2, trained with the alignment loss:
    # layercam@layer4 0.479 = gradcam++@layer4, gradcam@layer4 0.459); test patients chose nothing
    # input sides: the product of the maps at 128, 192 and 256 px, chosen on the same 12 validation
    # patients (mean pointing over FLAIR / T1 / T1c, every tumour slice): 128 alone 0.549, 192 alone
    # 0.659, 128+160 0.692, 128+192 0.711, 128+256 0.742, 128+192+256 0.769, 128+...+320 0.756,
    # 128+160+192+224+256 0.785 (within noise of 0.769 at 1.6x the cost, so not taken); shifted-input
    # averaging at 128 px 0.530, fusion with blocks.4 0.472
    "brain-tumor-4class-efficientnetlite0": ("layercam", "layer4", (128, 192, 256)),
}
MIN_HEATMAP_SIZE, MAX_HEATMAP_SIZE = 32, 1024
# model id -> Gaussian sigma (axial slices) of a volume heatmap's smoothing across slices; chosen
# on the same 12 TCGA-LGG validation patients, every tumour slice, pointing FLAIR / T1 / T1c (mean):
# none 0.862 / 0.779 / 0.667 (0.769); sigma 1 0.868 / 0.832 / 0.754 (0.818); 1.5 0.862 / 0.839 /
# 0.775 (0.825); 2.5 0.862 / 0.852 / 0.812 (0.842); 3.5 0.856 / 0.839 / 0.819 (0.838); 5 0.811;
# 8 0.804. Test patients chose nothing.
DEFAULT_SLICE_SIGMAS = {"brain-tumor-4class-efficientnetlite0": 2.5}
MAX_SLICE_SIGMA = 20.0


def parse_method(text: str) -> tuple:
    """``"METHOD"`` or ``"METHOD@LAYER"`` (e.g. ``layercam@layer3``) -> ``(method, layer or None)``.

    :raises InputError: unknown method or an empty layer name."""
    from ..errors import InputError

    method, _, layer = str(text).partition("@")
    method = method.strip().lower()
    if method not in METHODS:
        raise InputError(f"unknown heatmap method '{text}'; use one of {', '.join(METHODS)}, "
                         "optionally with @LAYER (e.g. layercam@layer3)")
    if "@" in str(text) and not layer.strip():
        raise InputError(f"heatmap method '{text}': give a layer name after '@' (e.g. gradcam@layer4)")
    return method, (layer.strip() or None)


def heatmap_choice(model, method=None, layer=None) -> tuple:
    """The ``(method, layer)`` used for ``model`` (see the module doc for the order)."""
    card = getattr(model, "card", {}) or {}
    entry = card.get("heatmap") if isinstance(card.get("heatmap"), dict) else {}
    default = DEFAULT_HEATMAPS.get(getattr(model, "id", None))
    fallback_layer = card.get("gradcam_layer") or getattr(model.network, "gradcam_layer", "layer4")
    if method is None:
        method = entry.get("method") or (default[0] if default else "gradcam")
        if layer is None:
            layer = entry.get("layer") or (default[1] if default else None)
    return method, layer or fallback_layer


def heatmap_sizes(model, sizes=None) -> tuple:
    """The sides in pixels of the slices a model's heatmap is computed on (see the module doc):
    ``sizes`` (an int or a sequence), else, when the card has a ``heatmap`` entry, its
    ``input_sizes``, else the third item of the model's :data:`DEFAULT_HEATMAPS` entry, else the
    model's own ``input_size``. The sides apply to whichever method and layer are used
    (``--heatmap-method`` does not change them; ``--heatmap-size`` does).

    :returns: tuple of distinct ints, ascending.
    :raises InputError: a side that is not a whole number of pixels in [32, 1024]."""
    from ..errors import InputError

    import numbers

    card = getattr(model, "card", {}) or {}
    entry = card.get("heatmap") if isinstance(card.get("heatmap"), dict) else None
    default = DEFAULT_HEATMAPS.get(getattr(model, "id", None)) or ()
    if sizes is None:  # a card's own heatmap entry is complete: the code's default sides are not mixed in
        sizes = ((entry.get("input_sizes") if entry is not None else (default[2] if len(default) > 2 else None))
                 or model.input_size)
    try:
        sizes = [sizes] if isinstance(sizes, (numbers.Number, str)) else list(sizes)
        ok = bool(sizes) and all(float(v) == int(v) and MIN_HEATMAP_SIZE <= int(v) <= MAX_HEATMAP_SIZE for v in sizes)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise InputError(f"heatmap input size {sizes!r}: give whole numbers of pixels from {MIN_HEATMAP_SIZE} "
                         f"to {MAX_HEATMAP_SIZE}")
    return tuple(sorted({int(v) for v in sizes}))


def heatmap_slice_sigma(model, sigma=None) -> float:
    """The Gaussian sigma, in axial slices, of a volume heatmap's smoothing across slices (module
    doc): ``sigma``, else the card's ``heatmap`` entry's ``slice_sigma`` (absent: 0), else the
    model's :data:`DEFAULT_SLICE_SIGMAS` entry, else 0 (none).

    :raises InputError: not a number from 0 to :data:`MAX_SLICE_SIGMA` (naming the model's card
        when the value comes from it)."""
    from ..errors import InputError

    source = ""
    if sigma is None:
        card = getattr(model, "card", {}) or {}
        entry = card.get("heatmap") if isinstance(card.get("heatmap"), dict) else None
        sigma = entry.get("slice_sigma", 0.0) if entry is not None else DEFAULT_SLICE_SIGMAS.get(getattr(model, "id", None), 0.0)
        source = f" (model '{getattr(model, 'id', '?')}' card, heatmap.slice_sigma)" if entry is not None else ""
    try:
        value = float(sigma)
        ok = not isinstance(sigma, (bool, np.bool_)) and 0.0 <= value <= MAX_SLICE_SIGMA
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise InputError(f"heatmap slice sigma {sigma!r}{source}: give a number of slices from 0 to "
                         f"{MAX_SLICE_SIGMA:g} (0: none)")
    return value


def smooth_across_slices(heat: np.ndarray, heads: np.ndarray, sigma: float) -> np.ndarray:
    """A volume heatmap smoothed along its slices, then cut to each slice's head (module doc).

    :param heat: float array (K, rows, cols), >= 0: axial slices in order.
    :param heads: bool array of the same shape (all False on a slice that is not explained).
    :param sigma: Gaussian sigma in slices (validated by :func:`heatmap_slice_sigma`); 0 (or a
        single slice) returns ``heat`` itself, unchanged and not cut again.
    :returns: float32 array (K, rows, cols), >= 0, zero wherever ``heads`` is False.
    """
    from scipy.ndimage import gaussian_filter1d

    if sigma <= 0 or heat.shape[0] < 2:
        return heat
    out = np.array(heat, dtype=np.float32)  # the one copy: filtered and cut in place (a volume's map can be ~1 GB)
    gaussian_filter1d(out, float(sigma), axis=0, mode="constant", output=out)
    out *= heads
    return out


def multiscale_cam(model, slices, keep, class_index: int, method: str, layer, sizes, crop: str = "slice"):
    """Class activation maps of ``slices[keep]`` combined over input scales (module doc).

    :param slices: list of 2D arrays (rows, cols), e.g. a volume's axial slices.
    :param keep: indices into ``slices`` to explain.
    :param sizes: sides in px (:func:`heatmap_sizes`); one side gives :func:`cam_batch`'s map.
    :param crop: :func:`preprocess.prepare_slices`'s crop (``preprocess.crop_mode`` of the card).
    :returns: ``(maps, geometries)``: float32 array (N, S, S), >= 0, S = the largest side (the
        product of the per-scale maps, each divided by its maximum over the N slices),
        and the :class:`preprocess.SliceGeometry` of each kept slice at side S.
    :raises InputError: unknown method or layer.
    """
    import torch
    import torch.nn.functional as F

    from .preprocess import prepare_slices

    keep, sizes = list(keep), sorted(sizes)
    out, geoms = None, None
    for side in sizes:
        batch, g, _ = prepare_slices(slices, side, crop=crop)
        m = torch.from_numpy(cam_batch(model, batch[keep], class_index, method, layer))
        if side != sizes[-1]:
            m = F.interpolate(m[:, None], size=(sizes[-1],) * 2, mode="bilinear", align_corners=False)[:, 0]
        else:
            geoms = [g[k] for k in keep]
        if len(sizes) > 1:
            m = (m / m.max().clamp_min(1e-12)).clamp_min(0)
        out = m if out is None else out * m
    return out.numpy().astype(np.float32), geoms


def cam_batch(model, batch, class_index: int, method: str = "gradcam", layer=None,
              batch_size: int = 32) -> np.ndarray:
    """Raw (unnormalised, >= 0) class activation maps at the model's input size.

    :param model: :class:`catalogue.LoadedModel`.
    :param batch: float32 tensor (N, 1, S, S), prepared slices.
    :param class_index: index into ``model.class_names``.
    :param method: one of :data:`METHODS`.
    :param layer: dotted name of the network's module to explain (default: the card's
        ``gradcam_layer``, else ``layer4``).
    :returns: float32 array (N, S, S).
    :raises InputError: unknown method or layer.
    """
    import torch
    import torch.nn.functional as F

    from ..errors import InputError

    method, layer = parse_method(method)[0], layer or heatmap_choice(model, method)[1]
    try:
        target = model.network.get_submodule(layer)
    except AttributeError:
        raise InputError(f"model '{getattr(model, 'id', '?')}' has no layer '{layer}' to explain") from None
    from monai.visualize.class_activation_maps import ModelWithHooks

    size = tuple(batch.shape[-2:])
    hooked = ModelWithHooks(model.network, [layer], register_forward=True, register_backward=True)
    maps = []
    try:
        for i in range(0, batch.shape[0], batch_size):
            x = batch[i:i + batch_size].to(model.device)
            with torch.enable_grad():
                _, acts, grads = hooked(x, class_idx=int(class_index))
            m = _combine(method, acts[0].detach().float(), grads[0].detach().float())
            m = torch.nan_to_num(m).clamp_min(0).cpu()[:, None]
            maps.append(F.interpolate(m, size=size, mode="bilinear", align_corners=False)[:, 0])
    finally:
        _remove_hooks(target)  # MONAI keeps no hook handles
        model.network.zero_grad(set_to_none=True)
    return torch.cat(maps).numpy() if maps else np.zeros((0,) + size, np.float32)


def _combine(method: str, acts, grads):
    """Map (N, h, w) from activations and gradients (N, C, h, w), as ``pytorch_grad_cam`` defines
    each method (``GradCAM``, ``GradCAMPlusPlus`` eq. 19, ``HiResCAM``, ``LayerCAM``)."""
    if method == "gradcam":
        return (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1)
    if method == "gradcam++":
        g2 = grads ** 2
        aij = g2 / (2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g2 * grads + 1e-6)
        aij = aij.where(grads != 0, aij.new_zeros(()))
        weights = (grads.clamp_min(0) * aij).sum(dim=(2, 3), keepdim=True)
        return (weights * acts).sum(1)
    if method == "hirescam":
        return (grads * acts).sum(1)
    return (grads.clamp_min(0) * acts).sum(1)  # layercam


def _remove_hooks(module) -> None:
    """Drop the forward / backward hooks ``ModelWithHooks`` put on ``module``."""
    module._forward_hooks.clear()
    module._backward_hooks.clear()


def gradcam_batch(model, batch, class_index: int, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM at the card's ``gradcam_layer`` (``layer4``): :func:`cam_batch` with
    ``method="gradcam"``; float32 array (N, S, S), >= 0, unnormalised."""
    layer = model.card.get("gradcam_layer") or getattr(model.network, "gradcam_layer", "layer4")
    return cam_batch(model, batch, class_index, "gradcam", layer, batch_size)


def head_mask(slice_array: np.ndarray) -> np.ndarray:
    """The head (or brain, for skull-stripped scans) of one 2D slice: the preprocessing's
    foreground (:func:`preprocess.normalize_slice`: not the constant border value) where the
    normalised intensity exceeds 0.1, closed, holes filled, and its connected components of
    at least 5% of the largest kept (so dark tumour cores and ventricles stay inside).

    :param slice_array: 2D array (rows, cols), any real dtype.
    :returns: bool array of the same shape (all False for an empty slice).
    """
    from scipy import ndimage

    from .preprocess import normalize_slice

    norm, fg = normalize_slice(slice_array)
    m = fg & (norm > 0.1)
    if not m.any():
        return m
    r = max(1, int(round(0.01 * max(m.shape))))
    m = ndimage.binary_closing(m, structure=np.ones((2 * r + 1, 2 * r + 1), bool), border_value=0)
    m = ndimage.binary_fill_holes(m)
    lab, n = ndimage.label(m)
    if n > 1:
        sizes = np.bincount(lab.ravel())[1:]
        m = np.isin(lab, 1 + np.flatnonzero(sizes >= 0.05 * sizes.max()))
    return m


def overlay_png(slice_array: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> bytes:
    """Render a heatmap over a grayscale slice as PNG bytes.

    :param slice_array: 2D array (rows, cols), any range (normalised like the model input).
    :param heat: 2D float array of the same shape in [0, 1].
    :param alpha: heatmap weight in the blend where the map is 1 (it fades with sqrt(heat)).
    """
    import cv2

    from .preprocess import normalize_slice

    gray, _ = normalize_slice(slice_array)
    gray8 = (gray * 255).astype(np.uint8)
    base = cv2.cvtColor(gray8, cv2.COLOR_GRAY2BGR)
    h = np.clip(heat, 0, 1).astype(np.float32)
    colour = cv2.applyColorMap((h * 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = (alpha * np.sqrt(h))[..., None]  # weak evidence stays nearly transparent
    blend = (base * (1 - weight) + colour * weight).round().astype(np.uint8)
    ok, buf = cv2.imencode(".png", blend)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()
