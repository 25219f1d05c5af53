"""Datasets of 2D slices in the ``ImageFolder`` layout (``ROOT/<class name>/<image>``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .io import SLICE_SUFFIXES, VOLUME_SUFFIXES, _suffix


def scan_image_folder(root, class_names: list | None = None):
    """List the images of an ImageFolder dataset.

    :param root: folder with one sub-folder per class.
    :param class_names: expected classes in logit order; default: sorted sub-folder names.
    :returns: ``(paths, labels, class_names)``: list of Path, int64 array (N,), list of str.
    :raises InputError: missing folder, no class folders, an expected class missing, or no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder not found: {root}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise InputError(f"{root}: no class folders (expected ImageFolder layout ROOT/<class>/<image>)")
    if class_names is None:
        class_names = found
    else:
        missing = [c for c in class_names if c not in found]
        if len(missing) == len(class_names):
            raise InputError(f"{root}: none of the model's classes ({', '.join(class_names)}) is a folder here")
    paths, labels = [], []
    for idx, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.is_file() and _suffix(p) in SLICE_SUFFIXES + VOLUME_SUFFIXES:
                paths.append(p)
                labels.append(idx)
    if not paths:
        raise InputError(f"{root}: no images found in the class folders")
    return paths, np.asarray(labels, dtype=np.int64), list(class_names)


def stratified_split(labels, val_fraction: float, seed: int):
    """Split indices into train and validation, the same fraction from every class.

    :returns: ``(train_idx, val_idx)``, sorted int64 arrays.
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = max(1, int(round(len(idx) * val_fraction))) if len(idx) > 1 else 0
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def load_slice_batch(paths, size: int, crop: str = "slice"):
    """Read 2D slice files and prepare them as one batch (see :func:`preprocess.prepare_slices`,
    whose ``crop`` argument this passes on).

    A 3D file contributes its middle axial slice.

    :returns: float32 tensor (N, 1, size, size) in [0, 1].
    :raises InputError: naming the first file that cannot be read.
    """
    import SimpleITK as sitk

    from .io import is_slice, read_image
    from .preprocess import prepare_slices, slice_array, to_lps_axial

    arrays = []
    for p in paths:
        img = read_image(p)
        if is_slice(img):
            arrays.append(slice_array(img))
        else:
            vol = sitk.GetArrayFromImage(to_lps_axial(img))
            arrays.append(vol[vol.shape[0] // 2])
    batch, _, _ = prepare_slices(arrays, size, crop=crop)
    return batch
