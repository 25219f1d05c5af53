"""SICF (LO-RF): SIFT + VGG16 feature fusion, Lyrebird-optimised feature selection and a
random forest, for 2D slices.

Source: Shi et al., "An intelligent MRI data fusion framework for optimized diagnosis of
spinal tumors", Front. Med. 2025. Pipeline per slice:

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
5. Fusion: concatenation, 512 + 4096 = 4608 features per slice (float32).
6. Feature selection: the Lyrebird Optimization Algorithm (:class:`LyrebirdOptimizer`,
   Dehghani M. et al., "Lyrebird Optimization Algorithm: a new bio-inspired metaheuristic
   algorithm for solving optimization problems", Biomimetics 8(6):507, 2023) on mealpy's
   ``Optimizer`` base (mealpy 3.0.3 ships no LOA), as a binary wrapper: positions in
   ``[-4, 4]^D`` map to a mask through the sigmoid transfer ``sigmoid(x) > 0.5``;
   fitness = 5-fold stratified cross-validated random-forest accuracy on the training
   slices minus ``penalty`` x the fraction of features kept.
7. Random forest (scikit-learn): 100 trees, max depth 20, Gini, balanced class weights.

Model folder (task ``sicf-2d``): ``model.json`` (card), ``forest.joblib`` (its sha256 in
the card is checked before unpickling), ``codebook.npy`` (float32 (n_words, 128)),
``feature_mask.npy`` (bool (4608,)), ``split.json``.

Retraining (``init_model``, see :mod:`brainspineai.retrain`): the parent's SIFT codebook,
feature mask (unless ``reselect``) and VGG16 weights (rebuilt from the card's provenance
and fingerprint) are reused, so the features mean the same; only the random forest is
refitted on the grown training set, the parent's validation images stay held out, and the
card records ``version``, ``parent``, ``lineage`` and ``parent_sha256``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError

TASK = "sicf-2d"
SIFT_DIM = 128
VGG_DIM = 4096
FOREST_NAME = "forest.joblib"
CODEBOOK_NAME = "codebook.npy"
MASK_NAME = "feature_mask.npy"
VGG_HUB_FILE = "vgg16-397923af.pth"
FEATURE_VERSION = 1
ABLATION_VARIANTS = {  # name: (feature blocks, LOA selection)
    "SIFT->RF": (("sift",), False),
    "VGG16->RF": (("vgg",), False),
    "SIFT+VGG16->RF": (("sift", "vgg"), False),
    "VGG16->LO-RF": (("vgg",), True),
    "SIFT+VGG16->LO-RF": (("sift", "vgg"), True),
}


@dataclass
class SICFConfig:
    """Options of :func:`train_sicf` (defaults follow the paper where it gives them).

    ``roi``: ``quadrant`` or ``full``; ``image_size``: ROI side after resizing (pixels, SIFT
    and VGG16 input); ``n_words``: codebook size; ``population`` / ``iterations``: LOA
    budget; ``penalty``: fitness penalty per fraction of features kept; ``cv_folds``: folds
    of the fitness; ``val_fraction``: held-out fraction per class; ``limit_per_class``: at
    most N images per class (0: all); ``vgg_weights``: ImageNet VGG16 state dict (.pth);
    ``select``: run LOA (False: forest on every feature); ``blocks``: feature blocks used;
    ``init_model``: retrain from this SICF model (id or folder; ``roi``, ``image_size`` and
    ``n_words`` may then be None: the parent's); ``reselect``: with ``init_model``, run LOA
    again on the grown training set instead of keeping the parent's feature mask.
    """

    roi: str | None = "quadrant"
    image_size: int | None = 224
    n_words: int | None = 512
    population: int = 10
    iterations: int = 10
    penalty: float = 0.01
    cv_folds: int = 5
    val_fraction: float = 0.3
    limit_per_class: int = 0
    seed: int = 0
    vgg_weights: str = ""
    select: bool = True
    blocks: tuple = ("sift", "vgg")
    n_bootstrap: int = 1000
    model_id: str = ""
    cache_dir: str = ""
    extra_card: dict = field(default_factory=dict)
    init_model: str = ""
    reselect: bool = False

    def check(self) -> None:
        if self.roi not in ("quadrant", "full"):
            raise InputError(f"--roi {self.roi}: use 'quadrant' (axial spine slices) or 'full'")
        if self.image_size < 32:
            raise InputError(f"--image-size {self.image_size}: at least 32 pixels")
        if self.n_words < 2:
            raise InputError(f"codebook size {self.n_words}: at least 2 words")
        if self.population < 5 or self.iterations < 1:
            raise InputError(f"LOA budget population {self.population} x iterations {self.iterations}: "
                             "need a population of at least 5 and at least 1 iteration")
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError(f"--val-fraction {self.val_fraction}: must be between 0 and 1")
        if self.cv_folds < 2:
            raise InputError(f"cross-validation folds {self.cv_folds}: at least 2")
        if not set(self.blocks) <= {"sift", "vgg"} or not self.blocks:
            raise InputError(f"feature blocks {self.blocks}: use 'sift' and / or 'vgg'")


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


class VGGFeatures:
    """torchvision VGG16 up to fc7 (4096-d, after ReLU), in eval mode on the CPU (or ``device``).

    ``provenance``: dict ``{"source": "file" | "random-init", "path", "sha256" | "seed",
    "fingerprint"}`` (fingerprint: sha256 of every parameter's bytes).
    """

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
            warnings.warn("no ImageNet VGG16 weights found (--vgg-weights, BRAINSPINEAI_VGG16_WEIGHTS or torch's hub "
                          f"cache {VGG_HUB_FILE}); using a seeded random initialisation: the VGG16 features are random "
                          "projections, not ImageNet features", stacklevel=2)
            self.provenance = {"source": "random-init", "seed": int(seed)}
        self.provenance["fingerprint"] = _state_fingerprint(net.state_dict())
        if provenance is not None and provenance.get("fingerprint") and provenance["fingerprint"] != self.provenance["fingerprint"]:
            raise ModelError("the VGG16 weights found differ from those this SICF model was trained with "
                             f"(fingerprint {self.provenance['fingerprint'][:12]}..., card says {provenance['fingerprint'][:12]}...)")
        net.classifier = net.classifier[:5]  # fc6, ReLU, Dropout, fc7, ReLU
        self.net = net.eval().to(device)
        self.device = device

    def __call__(self, rois_u8, batch_size: int = 16) -> np.ndarray:
        """fc7 features float32 (N, 4096) of equalised ROIs (N, S, S) uint8."""
        import torch

        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        out = []
        with torch.no_grad():
            for i in range(0, len(rois_u8), batch_size):
                x = torch.as_tensor(np.asarray(rois_u8[i:i + batch_size]), dtype=torch.float32)[:, None] / 255.0
                x = (x.repeat(1, 3, 1, 1) - mean) / std
                out.append(self.net(x.to(self.device)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, VGG_DIM), np.float32)


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


def extract_features(paths, cfg: SICFConfig, vgg: VGGFeatures, progress=None) -> dict:
    """ROI, SIFT descriptors and VGG16 fc7 of every file, cached per file (``npz`` keyed by
    absolute path, mtime, size, ROI mode, image size and the VGG16 fingerprint). Progress
    events (as :class:`BrainSpineAILib.background.BackgroundJob` reads them):
    ``{"event": "progress", "stage": "features", "fraction", "message", "slices_per_s", "eta_s"}``.

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
            "points": points, "vgg": np.stack(vggs) if vggs else np.zeros((0, VGG_DIM), np.float32)}


def fused_matrix(feats: dict, codebook) -> np.ndarray:
    """Fused features float32 (N, 4608): BoVW histogram (512) then VGG16 fc7 (4096)."""
    hist = np.stack([bovw_histogram(d, codebook) for d in feats["descriptors"]])
    return np.concatenate([hist, feats["vgg"]], axis=1).astype(np.float32)


def block_mask(n_words: int, blocks) -> np.ndarray:
    """bool (n_words + 4096,): True for the columns of the chosen feature blocks."""
    m = np.zeros(n_words + VGG_DIM, bool)
    if "sift" in blocks:
        m[:n_words] = True
    if "vgg" in blocks:
        m[n_words:] = True
    return m


# --------------------------------------------------------------------------------------
# Lyrebird Optimization Algorithm and the wrapper selection


def _lyrebird_class():
    from mealpy.optimizer import Optimizer

    class LyrebirdOptimizer(Optimizer):
        """Lyrebird Optimization Algorithm (Dehghani et al., Biomimetics 2023).

        Each iteration, every lyrebird i (position x_i) takes, with probability 1/2, one of
        two phases; the new position replaces x_i only if it is fitter (greedy):

        * escape (exploration): the *safe areas* of i are the members fitter than i plus
          the best so far; one is drawn at random (SSA) and
          ``x_new = x_i + r * (SSA - I * x_i)``, r ~ U(0, 1) and I ~ {1, 2} per dimension;
        * hiding (exploitation): ``x_new = x_i + (1 - 2 r) * (ub - lb) / t`` at iteration t.
        """

        def __init__(self, epoch: int = 10, pop_size: int = 10, **kwargs):
            super().__init__(**kwargs)
            self.epoch = self.validator.check_int("epoch", epoch, [1, 100000])
            self.pop_size = self.validator.check_int("pop_size", pop_size, [5, 10000])
            self.set_parameters(["epoch", "pop_size"])
            self.sort_flag = False

        def evolve(self, epoch):
            lb, ub, n = self.problem.lb, self.problem.ub, self.problem.n_dims
            for idx in range(self.pop_size):
                x = self.pop[idx].solution
                if self.generator.random() < 0.5:  # escape towards a safer area
                    safe = [a.solution for a in self.pop
                            if self.compare_target(a.target, self.pop[idx].target, self.problem.minmax)]
                    safe.append(self.g_best.solution)
                    ssa = safe[self.generator.integers(len(safe))]
                    pos = x + self.generator.random(n) * (ssa - self.generator.integers(1, 3, n) * x)
                else:  # hide nearby
                    pos = x + (1 - 2 * self.generator.random(n)) * (ub - lb) / epoch
                agent = self.generate_agent(self.correct_solution(pos))
                if self.compare_target(agent.target, self.pop[idx].target, self.problem.minmax):
                    self.pop[idx] = agent

    return LyrebirdOptimizer


def LyrebirdOptimizer(epoch: int = 10, pop_size: int = 10, **kwargs):
    """A mealpy optimiser running the Lyrebird Optimization Algorithm (see the module text);
    ``solve(problem)`` as any mealpy ``Optimizer``."""
    return _lyrebird_class()(epoch=epoch, pop_size=pop_size, **kwargs)


def make_forest(seed: int, n_jobs: int = 1):
    """The paper's random forest: 100 trees, max depth 20, Gini, balanced class weights."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=100, max_depth=20, criterion="gini", class_weight="balanced",
                                  random_state=seed, n_jobs=n_jobs)


def transfer(position) -> np.ndarray:
    """Binary mask from a continuous position: sigmoid transfer, kept where sigmoid(x) > 0.5."""
    return 1.0 / (1.0 + np.exp(-np.asarray(position, dtype=np.float64))) > 0.5


def select_features(x, y, population: int, iterations: int, penalty: float = 0.01, folds: int = 5,
                    seed: int = 0, candidates=None, progress=None) -> tuple[np.ndarray, dict]:
    """LOA wrapper feature selection (see the module text). Progress events:
    ``{"event": "progress", "stage": "loa", "fraction", "message", "evaluations", "of", "eta_s"}``.

    :param x: float32 (N, D) training features; ``y``: int (N,) labels.
    :param candidates: bool (D,) columns that may be selected (default all).
    :returns: ``(mask, info)``: bool (D,) and ``{"cv_accuracy", "fitness", "n_kept",
        "evaluations", "seconds"}``.
    """
    from mealpy import FloatVar
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    x = np.asarray(x, np.float32)
    cand = np.ones(x.shape[1], bool) if candidates is None else np.asarray(candidates, bool)
    cols = np.flatnonzero(cand)
    n_min = int(np.bincount(y).min())
    cv = StratifiedKFold(n_splits=max(2, min(folds, n_min)), shuffle=True, random_state=seed)
    cache, count = {}, [0]
    t0 = time.time()
    total = population * (iterations + 1)

    def accuracy(sub_mask):
        key = np.packbits(sub_mask).tobytes()
        if key not in cache:
            cache[key] = float(cross_val_score(make_forest(seed), x[:, cols[sub_mask]], y, cv=cv).mean()) \
                if sub_mask.any() else 0.0
        return cache[key]

    def fitness(position):
        sub = transfer(position)
        count[0] += 1
        f = accuracy(sub) - penalty * sub.mean()
        if progress and count[0] % max(1, population // 2) == 0:
            rate = count[0] / (time.time() - t0)
            progress({"event": "progress", "stage": "loa", "fraction": round(0.35 + 0.6 * min(count[0] / total, 1), 3),
                      "message": f"Lyrebird selection {count[0]}/{total} fitness evaluations", "evaluations": count[0],
                      "of": total, "eta_s": round(max(total - count[0], 0) / rate, 1)})
        return f

    problem = {"bounds": FloatVar(lb=[-4.0] * len(cols), ub=[4.0] * len(cols)), "minmax": "max",
               "obj_func": fitness, "log_to": None}
    opt = LyrebirdOptimizer(epoch=iterations, pop_size=population)
    best = opt.solve(problem, seed=seed)
    sub = transfer(best.solution)
    mask = np.zeros(x.shape[1], bool)
    mask[cols[sub]] = True
    return mask, {"cv_accuracy": accuracy(sub), "fitness": float(best.target.fitness), "n_kept": int(mask.sum()),
                  "n_candidates": int(len(cols)), "evaluations": count[0], "seconds": round(time.time() - t0, 2)}


# --------------------------------------------------------------------------------------
# Metrics


def sicf_metrics(y_true, probs, class_names, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """The paper's figures: accuracy, macro sensitivity, macro specificity, macro AUC and
    macro F1, each ``{"value", "ci95"}`` with a 95% percentile bootstrap interval.

    Accuracy and AUC (and the per-class figures under ``"probability_metrics"``) come from
    :func:`brainspineai.metrics.probability_metrics`; macro sensitivity / specificity / F1
    are recomputed on resamples drawn the same way (seeded ``numpy.random.Generator``,
    multinomial case counts), averaging over the classes present in each resample.
    """
    from ..metrics import classification_metrics, probability_metrics

    y = np.asarray(y_true, np.int64)
    probs = np.asarray(probs, np.float64)
    n, c = probs.shape
    pm = probability_metrics(y, probs, class_names, n_bootstrap=n_bootstrap, seed=seed)
    pred = probs.argmax(1)
    ind = np.zeros((n, c, 3))  # TP, FN, FP per class
    for k in range(c):
        ind[:, k, 0] = (y == k) & (pred == k)
        ind[:, k, 1] = (y == k) & (pred != k)
        ind[:, k, 2] = (y != k) & (pred == k)

    def macro(w):  # w: (B, N) case weights -> (sens, spec, f1) each (B,)
        tp, fn, fp = (np.einsum("bn,nk->bk", w, ind[:, :, j]) for j in range(3))
        tn = w.sum(1, keepdims=True) - tp - fn - fp
        with np.errstate(invalid="ignore", divide="ignore"):
            sens, spec, f1 = tp / (tp + fn), tn / (tn + fp), 2 * tp / (2 * tp + fp + fn)
        return np.nanmean(sens, 1), np.nanmean(spec, 1), np.nanmean(f1, 1)

    point = [float(v[0]) for v in macro(np.ones((1, n)))]
    boots = [[], [], []]
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        for start in range(0, n_bootstrap, 200):
            w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(200, n_bootstrap - start)).astype(np.float64)
            for j, v in enumerate(macro(w)):
                boots[j].append(v)

    def stat(value, samples):
        if not n_bootstrap:
            return {"value": value, "ci95": None}
        s = np.concatenate(samples)
        s = s[np.isfinite(s)]
        return {"value": value, "ci95": [float(np.quantile(s, 0.025)), float(np.quantile(s, 0.975))]}

    return {"accuracy": {"value": pm["accuracy"]["value"], "ci95": pm["accuracy"]["ci95"]},
            "sensitivity": stat(point[0], boots[0]), "specificity": stat(point[1], boots[1]),
            "auc": {"value": pm["macro_auc"]["value"], "ci95": pm["macro_auc"]["ci95"]},
            "f1": stat(point[2], boots[2]), "n": n, "n_bootstrap": n_bootstrap,
            "classification": classification_metrics(y, pred, class_names), "probability_metrics": pm}


# --------------------------------------------------------------------------------------
# Model folder


@dataclass
class SICFModel:
    """A loaded SICF model: ``card``, ``folder``, ``class_names``, ``codebook`` float32
    (n_words, 128), ``mask`` bool (4608,), ``forest`` (scikit-learn), ``vgg`` (:class:`VGGFeatures`)."""

    card: dict
    folder: Path
    class_names: list
    codebook: np.ndarray
    mask: np.ndarray
    forest: object
    vgg: object
    device: str = "cpu"
    kind: str = "sicf"
    network: object = None

    @property
    def id(self) -> str:
        return self.card["id"]

    @property
    def input_size(self) -> int:
        return int(self.card["input_size"][0])

    @property
    def roi(self) -> str:
        return self.card["roi"]

    def config(self) -> SICFConfig:
        return SICFConfig(roi=self.card["roi"], image_size=self.input_size, n_words=int(self.codebook.shape[0]))

    def predict_features(self, fused) -> np.ndarray:
        """Class probabilities float64 (N, C) of fused features (N, 4608)."""
        fused = np.asarray(fused, np.float32)
        probs = np.zeros((len(fused), len(self.class_names)))
        probs[:, self.forest.classes_] = self.forest.predict_proba(fused[:, self.mask])
        return probs


def _file_digests(folder: Path, names) -> dict:
    from ..catalogue import sha256_file

    return {n: sha256_file(folder / n) for n in names}


def save_sicf_model(out_dir, card: dict, forest, codebook, mask, extra_files: dict | None = None) -> Path:
    """Write an SICF model folder atomically (:func:`brainspineai.catalogue.write_model_folder`).
    Fills ``weights``, ``sha256`` (of ``forest.joblib``), ``files`` (sha256 of every file) and
    ``created``."""
    import io as _io

    import joblib

    from ..catalogue import sha256_file, write_model_folder

    def write_files(tmp: Path) -> dict:
        buf = _io.BytesIO()
        joblib.dump(forest, buf, compress=3)
        (tmp / FOREST_NAME).write_bytes(buf.getvalue())
        np.save(tmp / CODEBOOK_NAME, np.asarray(codebook, np.float32), allow_pickle=False)
        np.save(tmp / MASK_NAME, np.asarray(mask, bool), allow_pickle=False)
        return {"weights": FOREST_NAME, "sha256": sha256_file(tmp / FOREST_NAME),
                "files": _file_digests(tmp, [FOREST_NAME, CODEBOOK_NAME, MASK_NAME])}

    return write_model_folder(out_dir, card, write_files, extra_files)


def load_sicf_model(folder, card: dict | None = None, device: str = "cpu", vgg_weights: str = "") -> SICFModel:
    """Load an SICF model folder, checking every file's sha256 against the card before
    reading it (the forest is unpickled only after its digest matched).

    :raises ModelError: not an SICF card, missing file, or VGG16 weights that differ from
        the training ones. :raises ChecksumError: a file does not match the card.
    """
    import joblib

    from ..catalogue import read_card, verify_weights
    from ..errors import ChecksumError

    folder = Path(folder)
    card = card or read_card(folder)
    if card.get("task") != TASK:
        raise ModelError(f"model '{card.get('id')}' is a {card.get('task')} model, not an SICF model")
    verify_weights(folder, card)  # forest.joblib against card["sha256"]
    digests = card.get("files") or {}
    for name in (CODEBOOK_NAME, MASK_NAME):
        if not (folder / name).is_file():
            raise ModelError(f"{folder}: {name} is missing")
        if name not in digests:
            raise ModelError(f"{folder}: the model card lists no sha256 for {name}")
        got = _file_digests(folder, [name])[name]
        if got != digests[name]:
            raise ChecksumError(f"{folder / name}: checksum mismatch (sha256 {got[:12]}..., card says {digests[name][:12]}...)")
    try:
        forest = joblib.load(folder / card["weights"])
        codebook = np.load(folder / CODEBOOK_NAME, allow_pickle=False)
        mask = np.load(folder / MASK_NAME, allow_pickle=False).astype(bool)
    except Exception as exc:  # noqa: BLE001 - joblib / numpy raise several types
        raise ModelError(f"model '{card['id']}': cannot read its files ({exc})") from None
    if mask.shape != (codebook.shape[0] + VGG_DIM,) or int(mask.sum()) != getattr(forest, "n_features_in_", -1):
        raise ModelError(f"model '{card['id']}': feature mask, codebook and forest do not fit together")
    vgg = VGGFeatures(weights=vgg_weights, device="cpu" if device == "auto" else device, provenance=card["vgg16"])
    return SICFModel(card=card, folder=folder, class_names=list(card["class_names"]), codebook=codebook, mask=mask,
                     forest=forest, vgg=vgg, device=vgg.device)


# --------------------------------------------------------------------------------------
# Training, ablation and inference


_INHERITED = {"roi": "--roi", "image_size": "--image-size", "n_words": "--words"}  # fix the features' meaning


def _with_defaults(cfg: SICFConfig) -> SICFConfig:
    """``cfg`` with the options left None (``roi``, ``image_size``, ``n_words``) at their defaults."""
    base = SICFConfig()
    return replace(cfg, **{k: getattr(base, k) for k in _INHERITED if getattr(cfg, k) is None})


def load_sicf_parent(cfg: SICFConfig, class_names):
    """The SICF model a retraining run starts from (``cfg.init_model``), checked with
    :func:`brainspineai.retrain.load_parent` (task ``sicf-2d``, same class list) and loaded
    with :func:`load_sicf_model` (every file's sha256; VGG16 rebuilt from the card's
    provenance and checked against its fingerprint).

    :returns: ``(parent, model, cfg)``: :class:`brainspineai.retrain.Parent`,
        :class:`SICFModel` and ``cfg`` with the parent's ROI mode, image size, codebook size
        and feature blocks.
    :raises InputError: not an SICF model, other classes, an option (``--roi``,
        ``--image-size``, ``--words``) that differs from the parent's, or VGG16 weights
        that cannot be reproduced. :raises ModelError, ChecksumError: unknown or corrupted model.
    """
    from ..errors import ChecksumError
    from ..retrain import load_parent

    parent = load_parent(cfg.init_model, TASK, class_names)
    card = parent.card
    theirs = {"roi": card["roi"], "image_size": int(card["input_size"][0]), "n_words": int(card["n_words"])}
    for name, flag in _INHERITED.items():
        given = getattr(cfg, name)
        if given is not None and given != theirs[name]:
            raise InputError(f"--init-model {cfg.init_model}: model '{parent.id}' was trained with {flag} "
                             f"{theirs[name]}, this run asks for {flag} {given}; retraining keeps the parent's "
                             f"features (leave {flag} out or give {theirs[name]})")
    cfg = replace(cfg, **theirs, blocks=tuple(card.get("feature_blocks") or cfg.blocks))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a random-init VGG16 is the parent's own, rebuilt from its seed
            model = load_sicf_model(parent.folder, card, vgg_weights=cfg.vgg_weights)
    except ChecksumError:
        raise
    except ModelError as exc:
        raise InputError(f"--init-model {cfg.init_model}: cannot reuse model '{parent.id}': {exc}") from None
    return parent, model, cfg


def _prepare_data(data_dir, cfg: SICFConfig, progress=None):
    from ..classification.data import limit_per_class_subset, scan_image_folder, stratified_split
    from ..retrain import keep_parent_split

    root = Path(data_dir)
    paths, labels, class_names = scan_image_folder(root)
    if len(class_names) < 2:
        raise InputError(f"{root}: need at least two class folders, found {len(class_names)}")
    parent = pmodel = None
    if cfg.init_model:
        parent, pmodel, cfg = load_sicf_parent(cfg, class_names)
    else:
        cfg = _with_defaults(cfg)
    cfg.check()
    paths, labels = limit_per_class_subset(paths, labels, cfg.limit_per_class, cfg.seed)
    tr, va = stratified_split(labels, cfg.val_fraction, cfg.seed)
    tr, va, n_kept = keep_parent_split(parent, paths, root, tr, va)
    for c, name in enumerate(class_names):
        if not np.any(labels[tr] == c) or not np.any(labels[va] == c):
            raise InputError(f"{root}: class '{name}' has too few images for a training and a validation split")
    vgg = pmodel.vgg if pmodel is not None else VGGFeatures(cfg.vgg_weights, seed=cfg.seed)
    if progress:
        progress({"event": "data", "pipeline": "sicf", "n_train": len(tr), "n_val": len(va), "classes": class_names,
                  "vgg16": vgg.provenance["source"], **({"parent": parent.id, "parent_validation_kept": n_kept}
                                                        if parent else {})})
    t0 = time.time()
    feats = extract_features(paths, cfg, vgg, progress=progress)
    t_feat = time.time() - t0
    t0 = time.time()
    if pmodel is not None:  # the parent's visual words: its feature mask keeps its meaning
        codebook = pmodel.codebook
    else:
        codebook = fit_codebook([feats["descriptors"][i] for i in tr], cfg.n_words, cfg.seed)
    t_code = time.time() - t0
    fused = fused_matrix(feats, codebook)
    ctx = {"cfg": cfg, "parent": parent, "parent_model": pmodel, "parent_validation_kept": n_kept}
    return root, paths, labels, class_names, tr, va, vgg, feats, codebook, fused, {"features_s": round(t_feat, 2),
                                                                                   "codebook_s": round(t_code, 2)}, ctx


def _fit_variant(fused, labels, tr, va, class_names, cfg: SICFConfig, progress=None, mask=None):
    cand = block_mask(cfg.n_words, cfg.blocks)
    t0 = time.time()
    if mask is not None:  # a retrained model keeping its parent's selection
        mask, sel = np.asarray(mask, bool), None
    elif cfg.select:
        mask, sel = select_features(fused[tr], labels[tr], cfg.population, cfg.iterations, cfg.penalty,
                                    cfg.cv_folds, cfg.seed, candidates=cand, progress=progress)
    else:
        mask, sel = cand, None
    t_sel = time.time() - t0
    t0 = time.time()
    forest = make_forest(cfg.seed).fit(fused[tr][:, mask], labels[tr])
    t_fit = time.time() - t0
    probs = np.zeros((len(va), len(class_names)))
    probs[:, forest.classes_] = forest.predict_proba(fused[va][:, mask])
    metrics = sicf_metrics(labels[va], probs, class_names, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    return forest, mask, sel, metrics, {"selection_s": round(t_sel, 2), "forest_fit_s": round(t_fit, 2)}


def _card(cfg, root, paths, labels, tr, va, class_names, vgg, codebook, mask, sel, metrics, timing, out_dir) -> dict:
    return {
        "id": cfg.model_id or Path(out_dir).name, "version": 1, "task": TASK, "architecture": "sicf-lorf",
        "method": "SICF (Shi et al., Front. Med. 2025): SIFT BoVW + VGG16 fc7 fusion, Lyrebird-optimised RF",
        "class_names": class_names, "input_size": [cfg.image_size, cfg.image_size], "in_channels": 1,
        "roi": cfg.roi, "n_words": int(codebook.shape[0]), "feature_blocks": list(cfg.blocks),
        "n_features": int(len(mask)), "n_features_kept": int(mask.sum()),
        "selection": ({"method": "LOA (Dehghani et al. 2023), binary sigmoid transfer", "population": cfg.population,
                       "iterations": cfg.iterations, "penalty": cfg.penalty, "cv_folds": cfg.cv_folds, **sel}
                      if sel else None),
        "forest": {"n_estimators": 100, "max_depth": 20, "criterion": "gini", "class_weight": "balanced",
                   "random_state": cfg.seed},
        "vgg16": vgg.provenance, "gradcam_layer": None,
        "training_data": {"folder": root.name, "n_train": int(len(tr)), "n_validation": int(len(va)),
                          "limit_per_class": cfg.limit_per_class, "val_fraction": cfg.val_fraction, "seed": cfg.seed},
        "metrics": {"validation": {"accuracy": metrics["accuracy"]["value"], **{k: metrics[k] for k in
                                   ("sensitivity", "specificity", "auc", "f1")},
                                   "accuracy_ci95": metrics["accuracy"]["ci95"], "n": metrics["n"]}},
        "timing_s": timing, **cfg.extra_card,
    }


def _split_json(root, paths, tr, va, class_names) -> str:
    return json.dumps({"data_folder": root.name, "class_names": class_names,
                       "validation": [str(Path(paths[i]).relative_to(root)) for i in va],
                       "train": [str(Path(paths[i]).relative_to(root)) for i in tr]}, indent=2) + "\n"


def train_sicf(data_dir, out_dir, cfg: SICFConfig, progress=None) -> Path:
    """Train an SICF model on an ImageFolder dataset (stratified split ``val_fraction``) and
    write its model folder (see the module text); the card's ``metrics.validation`` holds
    :func:`sicf_metrics` on the held-out slices.

    With ``cfg.init_model`` the run retrains that SICF model (:func:`load_sicf_parent`): its
    codebook, VGG16 and (unless ``cfg.reselect``) feature mask are reused, the forest is
    refitted, the parent's validation images stay held out
    (:func:`brainspineai.retrain.keep_parent_split`) and the card becomes the parent's next
    version (:func:`brainspineai.retrain.version_card`: id ``<id>-v<N>`` unless
    ``cfg.model_id``). The parent's folder is not written to.

    :raises InputError: bad options or data; a parent that is not an SICF model, has other
        classes or VGG16 weights that cannot be reproduced; ``out_dir`` = the parent's folder.
    """
    if cfg.init_model:
        from ..catalogue import resolve_model

        if Path(out_dir).resolve() == Path(resolve_model(cfg.init_model)).resolve():
            raise InputError(f"--out {out_dir}: that is the parent model's folder; retraining writes a new "
                             "version beside it and leaves the parent untouched")
    else:
        _with_defaults(cfg).check()
    root, paths, labels, class_names, tr, va, vgg, feats, codebook, fused, timing, ctx = _prepare_data(
        data_dir, cfg, progress)
    cfg, parent, pmodel = ctx["cfg"], ctx["parent"], ctx["parent_model"]
    keep = pmodel.mask if pmodel is not None and not cfg.reselect else None
    forest, mask, sel, metrics, t2 = _fit_variant(fused, labels, tr, va, class_names, cfg, progress, mask=keep)
    card = _card(cfg, root, paths, labels, tr, va, class_names, vgg, codebook, mask, sel, metrics, {**timing, **t2}, out_dir)
    if parent is not None:
        from ..retrain import version_card

        card["codebook"] = {"inherited_from": parent.id}
        if keep is not None:
            card["selection"] = dict(parent.card.get("selection") or {}, inherited_from=parent.id)
        card = version_card(card, parent, cfg.model_id, ctx["parent_validation_kept"])
    folder = save_sicf_model(out_dir, card, forest, codebook, mask,
                             extra_files={"split.json": _split_json(root, paths, tr, va, class_names)})
    if progress:
        progress({"event": "done", "pipeline": "sicf", "model": str(folder),
                  "metrics": {"val_accuracy": metrics["accuracy"]["value"], "n_features_kept": int(mask.sum())}})
    return folder


def run_ablation(data_dir, out_dir, cfg: SICFConfig, progress=None, variants=None) -> dict:
    """The paper's ablation on one split and seed: SIFT->RF, VGG16->RF, SIFT+VGG16->RF,
    VGG16->LO-RF and SIFT+VGG16->LO-RF (features extracted once). Writes ``ablation.json``
    and ``ablation.md`` in ``out_dir``.

    :returns: ``{"rows": [{"variant", "accuracy", "sensitivity", "specificity", "auc", "f1"
        (each {"value", "ci95"}), "n_features_kept", "selection_s", "forest_fit_s"}], "config", ...}``.
    """
    from ..io import atomic_write_text

    _with_defaults(cfg).check()
    names = list(variants or ABLATION_VARIANTS)
    for name in names:
        if name not in ABLATION_VARIANTS:
            raise InputError(f"unknown ablation variant '{name}'; known: {', '.join(ABLATION_VARIANTS)}")
    root, paths, labels, class_names, tr, va, vgg, feats, codebook, fused, timing, ctx = _prepare_data(
        data_dir, cfg, progress)
    cfg = ctx["cfg"]
    rows = []
    for name in names:
        blocks, select = ABLATION_VARIANTS[name]
        vcfg = replace(cfg, blocks=blocks, select=select)
        if progress:
            progress({"event": "variant", "variant": name})
        _, mask, sel, m, t = _fit_variant(fused, labels, tr, va, class_names, vcfg, progress)
        rows.append({"variant": name, **{k: m[k] for k in ("accuracy", "sensitivity", "specificity", "auc", "f1")},
                     "n_features": int(block_mask(cfg.n_words, blocks).sum()), "n_features_kept": int(mask.sum()),
                     "loa_cv_accuracy": sel["cv_accuracy"] if sel else None, **t})
    doc = {"rows": rows, "data": str(root), "class_names": class_names, "n_train": int(len(tr)),
           "n_validation": int(len(va)), "vgg16": vgg.provenance, "timing_s": timing,
           "config": {k: v for k, v in asdict(cfg).items() if k not in ("extra_card", "blocks", "select", "cache_dir")}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ablation.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(out / "ablation.md", ablation_markdown(doc))
    return doc


def ablation_markdown(doc: dict) -> str:
    c = doc["config"]

    def cell(s):
        return "–" if s["value"] is None else (f"{s['value']:.3f}" + (f" ({s['ci95'][0]:.3f}–{s['ci95'][1]:.3f})" if s["ci95"] else ""))

    vgg = doc["vgg16"]["source"]
    lines = [f"SICF ablation on {Path(doc['data']).name}: {doc['n_train']} training / {doc['n_validation']} validation "
             f"slices, ROI {c['roi']}, {c['image_size']} px, VGG16 {'ImageNet' if vgg == 'file' else 'RANDOM-INIT (no ImageNet weights)'}, "
             f"LOA population {c['population']} x {c['iterations']} iterations, seed {c['seed']}; "
             f"95% bootstrap CIs ({c['n_bootstrap']} resamples)", "",
             "| variant | accuracy | sensitivity | specificity | AUC | F1 | features kept | selection s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['variant']} | {cell(r['accuracy'])} | {cell(r['sensitivity'])} | {cell(r['specificity'])} | "
                     f"{cell(r['auc'])} | {cell(r['f1'])} | {r['n_features_kept']} / {r['n_features']} | {r['selection_s']:.0f} |")
    return "\n".join(lines) + "\n"


def slice_details(arr, model: SICFModel) -> dict:
    """ROI box, SIFT keypoints (slice pixels) and fused features of one 2D slice.

    :returns: ``{"box": (row0, col0, row1, col1), "keypoints": float32 (K, 2) as (row, col)
        in slice pixels, "roi": uint8 (S, S), "fused": float32 (4608,)}``.
    """
    box = roi_box(arr, model.roi)
    roi = equalised_roi(arr, box, model.input_size)
    pts, desc = sift_features(roi)
    r0, c0, r1, c1 = box
    s = model.input_size
    kp = np.stack([r0 + pts[:, 1] * (r1 - r0) / s, c0 + pts[:, 0] * (c1 - c0) / s], axis=1).astype(np.float32) \
        if len(pts) else np.zeros((0, 2), np.float32)
    fused = np.concatenate([bovw_histogram(desc, model.codebook), model.vgg(roi[None])[0]]).astype(np.float32)
    return {"box": tuple(int(v) for v in box), "keypoints": kp, "roi": roi, "fused": fused}


def classify_sicf(image, model: SICFModel, progress=None):
    """Classify a 2D slice, or a volume slice by slice, with an SICF model.

    A volume is reoriented to LPS; axial slices whose foreground (pixels above the slice's
    1st percentile + 10% of its range) covers at least 5% are classified, and the volume's
    probabilities are their mean. The ROI and keypoints reported are those of the 2D slice,
    or of the volume's middle classified slice.

    :returns: :class:`brainspineai.classification.inference.ClassificationResult` whose ``extra["sicf"]``
        is ``{"roi_box": [row0, col0, row1, col1], "keypoints": [[row, col], ...],
        "slice_index": LPS axial index or None, "n_features_kept", "roi_mode"}``.
    :raises InputError: NaN / infinite or constant input.
    """
    import SimpleITK as sitk

    from ..classification.inference import ClassificationResult
    from ..io import is_slice, validate_image
    from ..classification.preprocess import slice_array, to_lps_axial

    validate_image(image)
    if is_slice(image):
        arrays, indices = [slice_array(image)], [None]
    else:
        vol = sitk.GetArrayFromImage(to_lps_axial(image)).astype(np.float32)
        arrays, indices = [], []
        for k in range(vol.shape[0]):
            a = vol[k]
            lo, hi = np.percentile(a, 1), a.max()
            if hi > lo and np.mean(a > lo + 0.1 * (hi - lo)) >= 0.05:
                arrays.append(a)
                indices.append(k)
        if not arrays:
            raise InputError("no axial slice of the volume has enough foreground to classify")
    details = []
    for i, a in enumerate(arrays):
        details.append(slice_details(a, model))
        if progress:
            progress((i + 1) / len(arrays), f"slice {i + 1}/{len(arrays)}")
    probs_all = model.predict_features(np.stack([d["fused"] for d in details]))
    probs = probs_all.mean(0)
    probs = probs / probs.sum()
    mid = len(details) // 2
    slices = None
    if indices[0] is not None:
        slices = [{"index": int(k), "probabilities": [float(p) for p in pr]} for k, pr in zip(indices, probs_all)]
    extra = {"sicf": {"roi_box": list(details[mid]["box"]), "keypoints": details[mid]["keypoints"].round(2).tolist(),
                      "slice_index": indices[mid], "n_features_kept": int(model.mask.sum()),
                      "n_features": int(len(model.mask)), "roi_mode": model.roi}}
    return ClassificationResult(model=model.id, classes=list(model.class_names), probabilities=probs,
                                predicted=model.class_names[int(np.argmax(probs))], slices=slices,
                                rule="mean over classified axial slices" if slices else "single slice", extra=extra)
