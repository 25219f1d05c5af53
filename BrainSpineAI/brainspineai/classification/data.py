"""Datasets of 2D slices in the ``ImageFolder`` layout (``ROOT/<class name>/<image>``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import SLICE_SUFFIXES, VOLUME_SUFFIXES, _suffix


def scan_image_folder(root, class_names: list | None = None):
    """List the images of an ImageFolder dataset.

    :param root: folder with one sub-folder per class.
    :param class_names: expected classes in logit order; default: sorted sub-folder names.
    Slices that cannot be decoded completely (e.g. truncated JPEGs) are skipped with a note
    on stderr (see :func:`datasets.readable_slices`).

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
    from ..datasets import readable_slices, warn_skipped

    good, bad = readable_slices(paths)  # truncated / undecodable slices are left out, as the summary says
    if bad:
        warn_skipped(root, bad)
        keep = set(map(str, good))
        labels = [lab for p, lab in zip(paths, labels) if str(p) in keep]
        paths = good
    if not paths:
        raise InputError(f"{root}: none of the images in the class folders can be decoded")
    return paths, np.asarray(labels, dtype=np.int64), list(class_names)


def limit_per_class_subset(paths, labels, limit: int, seed: int):
    """A seeded random subset of at most ``limit`` images per class, in the original order
    (``limit`` <= 0: everything). :returns: ``(paths, labels)``."""
    if limit <= 0:
        return paths, labels
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:limit] for c in np.unique(labels)]))
    return [paths[i] for i in keep], labels[keep]


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


GROUPS_FILE = "groups.csv"


def split_dataset(root, paths, labels, val_fraction: float, seed: int):
    """The train / validation split of an ImageFolder dataset: :func:`stratified_split`, or,
    when ``ROOT/groups.csv`` exists, a patient-level split (:func:`group_split`).

    ``groups.csv`` has the columns ``image`` (path relative to ``ROOT``) and ``group`` (e.g.
    a patient id; every image of a group lands on one side), and optionally ``split``
    (``train`` or ``validation``: fixes the side of that image's group). Images it does not
    list are groups of their own.

    :returns: ``(train_idx, val_idx, groups_used)``: sorted int64 arrays and whether the file was used.
    :raises InputError: an unreadable groups file, or a group fixed to both sides.
    """
    import csv

    path = Path(root) / GROUPS_FILE
    if not path.is_file():
        return (*stratified_split(labels, val_fraction, seed), False)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = {r["image"]: (r["group"], (r.get("split") or "").strip()) for r in csv.DictReader(fh)}
    except (OSError, KeyError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a groups file with columns image, group[, split] ({exc})") from None
    groups, fixed = [], {}
    for p in paths:
        rel = str(Path(p).relative_to(root))
        g, side = rows.get(rel, ("image:" + rel, ""))
        groups.append(g)
        if side:
            if side not in ("train", "validation"):
                raise InputError(f"{path}: split must be train or validation, got {side!r} for {rel}")
            if fixed.setdefault(g, side) != side:
                raise InputError(f"{path}: group {g!r} is fixed to both train and validation")
    return (*group_split(labels, groups, val_fraction, seed, fixed), True)


def group_split(labels, groups, val_fraction: float, seed: int, fixed: dict | None = None):
    """Split indices so that every group lies on one side, about ``val_fraction`` of every
    class in validation: groups in ``fixed`` (group -> ``"train"`` / ``"validation"``) go
    where they are told; the others, shuffled with ``seed``, fill each class's validation
    quota in turn by the class most of their images have.

    :returns: ``(train_idx, val_idx)``, sorted int64 arrays.
    """
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    labels, groups, fixed = np.asarray(labels), np.asarray(groups, dtype=object), dict(fixed or {})
    names = sorted(set(groups.tolist()))
    members = {g: np.flatnonzero(groups == g) for g in names}
    is_val = {g: fixed[g] == "validation" for g in names if g in fixed}
    val_count = np.bincount(labels[np.concatenate([members[g] for g, v in is_val.items() if v] or [[]]).astype(int)],
                            minlength=int(labels.max()) + 1)
    quota = np.round(np.bincount(labels, minlength=int(labels.max()) + 1) * val_fraction)
    rng = np.random.default_rng(seed)
    for g in [names[i] for i in rng.permutation(len(names))]:
        if g in is_val:
            continue
        c = int(np.bincount(labels[members[g]]).argmax())
        is_val[g] = bool(val_count[c] < quota[c])
        if is_val[g]:
            val_count += np.bincount(labels[members[g]], minlength=len(val_count))
    val = np.sort(np.concatenate([members[g] for g in names if is_val[g]] or [np.zeros(0, int)])).astype(np.int64)
    train = np.sort(np.concatenate([members[g] for g in names if not is_val[g]] or [np.zeros(0, int)])).astype(np.int64)
    return train, val


def load_slice_batch(paths, size: int, crop: str = "slice", return_geometry: bool = False):
    """Read 2D slice files and prepare them as one batch (see :func:`preprocess.prepare_slices`,
    whose ``crop`` argument this passes on).

    A 3D file contributes its middle axial slice.

    :returns: float32 tensor (N, 1, size, size) in [0, 1]; with ``return_geometry`` also
        the list of :class:`preprocess.SliceGeometry`.
    :raises InputError: naming the first file that cannot be read.
    """
    import SimpleITK as sitk

    from ..io import is_slice, read_image
    from .preprocess import prepare_slices, slice_array, to_lps_axial

    arrays = []
    for p in paths:
        img = read_image(p)
        if is_slice(img):
            arrays.append(slice_array(img))
        else:
            vol = sitk.GetArrayFromImage(to_lps_axial(img))
            arrays.append(vol[vol.shape[0] // 2])
    batch, geoms, _ = prepare_slices(arrays, size, crop=crop)
    return (batch, geoms) if return_geometry else batch


@dataclass
class LabelledSplit:
    """A labelled slice dataset in memory, split like :func:`stratified_split`.

    ``x``: float32 tensor (N, 1, S, S) in [0, 1]; ``y``: int64 tensor (N,);
    ``paths``: list of Path; ``class_names``; ``train_idx`` / ``val_idx``: int64 arrays;
    ``boxes``: float32 tensor (N, 4) of tumour boxes (x0, y0, x1, y1 as fractions of the
    prepared slice; NaN rows where none is known) or None; ``root``: the dataset folder.
    """

    x: object
    y: object
    paths: list
    class_names: list
    train_idx: np.ndarray
    val_idx: np.ndarray
    root: Path
    boxes: object = None

    def split_json(self) -> dict:
        """The ``split.json`` document of a model trained on this split."""
        return {"data_folder": self.root.name, "class_names": self.class_names,
                "validation": [str(self.paths[i].relative_to(self.root)) for i in self.val_idx],
                "train": [str(self.paths[i].relative_to(self.root)) for i in self.train_idx]}


def load_labelled_split(root, size: int, val_fraction: float, seed: int, limit_per_class: int = 0,
                        boxes_csv=None) -> LabelledSplit:
    """Load an ImageFolder dataset, prepared at ``size`` pixels, with its split (stratified, or
    by patient where the folder has a ``groups.csv``, see :func:`split_dataset`).

    :param limit_per_class: >0: a seeded random subset of at most this many images per class.
    :param boxes_csv: optional CSV with columns ``image`` (path relative to ``root``),
        ``x_center``, ``y_center``, ``width``, ``height`` (fractions of the original image),
        e.g. ``figshare3/tumor_boxes.csv``; boxes are mapped through the foreground crop and
        padding into prepared-slice fractions. Images with several rows get their union box.
    :raises InputError: bad dataset, a class without training or validation images, or an
        unreadable boxes file.
    """
    import torch

    root = Path(root)
    paths, labels, class_names = scan_image_folder(root)
    if len(class_names) < 2:
        raise InputError(f"{root}: need at least two class folders, found {len(class_names)}")
    paths, labels = limit_per_class_subset(paths, labels, limit_per_class, seed)
    train_idx, val_idx, _ = split_dataset(root, paths, labels, val_fraction, seed)
    for c, name in enumerate(class_names):
        if not np.any(labels[train_idx] == c) or not np.any(labels[val_idx] == c):
            raise InputError(f"{root}: class '{name}' has too few images for a training and a validation split")
    x, geoms = load_slice_batch(paths, size, return_geometry=True)
    boxes = torch.from_numpy(prepared_boxes(paths, root, geoms, read_box_table(boxes_csv))) if boxes_csv else None
    return LabelledSplit(x=x, y=torch.as_tensor(labels), paths=paths, class_names=class_names,
                         train_idx=train_idx, val_idx=val_idx, root=root, boxes=boxes)


def read_box_table(boxes_csv) -> dict:
    """A tumour-box CSV (``image`` relative to the dataset root, ``x_center``, ``y_center``,
    ``width``, ``height`` as fractions of the original image) -> ``{image: (x0, y0, x1, y1)}``;
    images with several rows get their union box.

    :raises InputError: an unreadable file or missing columns."""
    import csv

    try:
        with open(boxes_csv, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        table = {}
        for r in rows:
            xc, yc, w, h = (float(r[k]) for k in ("x_center", "y_center", "width", "height"))
            b = np.array([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2])
            old = table.get(r["image"])
            table[r["image"]] = b if old is None else np.concatenate([np.minimum(old[:2], b[:2]),
                                                                      np.maximum(old[2:], b[2:])])
    except (OSError, KeyError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{boxes_csv}: not a tumour-box CSV with image, x_center, y_center, width, height ({exc})") from None
    return table


def prepared_boxes(paths, root, geoms, table: dict) -> np.ndarray:
    """float32 (N, 4): each image's box from :func:`read_box_table` mapped into its prepared
    slice (:func:`box_to_prepared`); NaN rows where the table has none."""
    out = np.full((len(paths), 4), np.nan, dtype=np.float32)
    for i, (p, g) in enumerate(zip(paths, geoms)):
        b = table.get(Path(p).relative_to(root).as_posix())
        if b is not None:
            out[i] = box_to_prepared(b, g)
    return out


def box_to_prepared(box, geom) -> np.ndarray:
    """Map a box (x0, y0, x1, y1 as fractions of the original slice) into fractions of the
    prepared square (see :class:`preprocess.SliceGeometry`), clipped to [0, 1]."""
    rows, cols = geom.shape
    r0, c0 = (geom.box[0], geom.box[2]) if geom.box is not None else (0, 0)
    xs = (np.array([box[0], box[2]]) * cols - c0 + geom.pad_left) / geom.side
    ys = (np.array([box[1], box[3]]) * rows - r0 + geom.pad_top) / geom.side
    return np.clip(np.array([xs[0], ys[0], xs[1], ys[1]], dtype=np.float32), 0, 1)
