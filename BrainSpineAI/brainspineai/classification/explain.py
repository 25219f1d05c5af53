"""Grad-CAM (Selvaraju et al., ICCV 2017) through ``monai.visualize.GradCAM``.

Maps are computed at the model's input size on the network's last convolutional stage
(``card["gradcam_layer"]``, ``layer4``), rectified, upsampled bilinearly, and mapped back
onto the original pixel grid (see :func:`preprocess.restore_map`). Scaling: a slice's map
is divided by its own maximum; a volume's maps share one scale (divided by the maximum over
all slices), so that weak evidence on one slice does not look as strong as the peak.
"""
from __future__ import annotations

import numpy as np


def gradcam_batch(model, batch, class_index: int, batch_size: int = 32) -> np.ndarray:
    """Raw (unnormalised, >= 0) Grad-CAM maps for ``class_index``.

    :param model: :class:`catalogue.LoadedModel`.
    :param batch: float32 tensor (N, 1, S, S), prepared slices.
    :param class_index: index into ``model.class_names``.
    :returns: float32 array (N, S, S).
    """
    import torch
    from monai.visualize import GradCAM

    layer = model.card.get("gradcam_layer", "layer4")
    cam = GradCAM(nn_module=model.network, target_layers=layer, postprocessing=lambda x: x)
    maps = []
    for i in range(0, batch.shape[0], batch_size):
        x = batch[i:i + batch_size].to(model.device).requires_grad_(False)
        with torch.enable_grad():
            m = cam(x, class_idx=int(class_index))
        maps.append(torch.nan_to_num(m.detach().float().cpu()[:, 0]).clamp_min(0))
    model.network.zero_grad(set_to_none=True)
    return torch.cat(maps).numpy() if maps else np.zeros((0,) + tuple(batch.shape[-2:]), np.float32)


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
