"""Reading and writing images.

Everything is read with SimpleITK, so the physical geometry (spacing in mm, origin in
mm, direction cosines, all in LPS as ITK defines them) travels with the pixels.

Supported inputs: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``), a folder holding one DICOM series, and 2D JPEG / PNG slices
(RGB or RGBA is turned into grayscale with ITU-R BT.601 luma weights).

Before any voxel is read, the file itself is checked (:func:`check_image_file`): a NIfTI
header is parsed (:mod:`brainspineai.headers`; NIfTI-1 / NIfTI-2, Cox et al.,
nifti.nimh.nih.gov) and its
dimensions are compared with a voxel-count limit (:data:`MAX_VOXELS`) and with the bytes
the file actually holds (``.nii.gz``: fully decompressed with :mod:`gzip`, which also checks
the CRC and the end-of-stream marker), because SimpleITK reads the missing part of a
truncated NIfTI as zeros and turns NaN / infinite voxels into 0 (so their raw values are
checked here too). NRRD and MetaImage headers get the same limit and, for raw data in the
file, the same length check; every format then gets the limit again from
``ImageFileReader.ReadImageInformation`` (no voxels read); ITK itself refuses other
truncated NRRD and MetaImage data. A DICOM folder is refused when GDCM leaves one of its
DICOM files out of the series (a truncated slice is dropped silently) or when the slice
positions are unevenly spaced (a missing slice would stretch the volume). JPEG / PNG slices are fully decoded with Pillow first, because
SimpleITK pads a truncated JPEG with grey. Images are then refused when degenerate
(:func:`validate_image`: fewer than :data:`MIN_SIDE` pixels per in-plane side, constant).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import InputError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SLICE_SUFFIXES = (".jpg", ".jpeg", ".png")
SUPPORTED = VOLUME_SUFFIXES + SLICE_SUFFIXES
MIN_SIDE = 16  # pixels: the smallest in-plane side of a slice (or of a volume's two largest axes)
MAX_VOXELS = 2 ** 28  # 268 M voxels (1 GiB as float32): larger headers are refused before reading


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in SUPPORTED:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def to_grayscale(image):
    """Return a scalar float32 image; vector (RGB/RGBA) pixels become BT.601 luma.

    :param image: ``SimpleITK.Image``, scalar or with 3 or 4 components per pixel.
    :raises InputError: for any other number of components.
    """
    import SimpleITK as sitk

    n = image.GetNumberOfComponentsPerPixel()
    if n == 1:
        return sitk.Cast(image, sitk.sitkFloat32)
    if n not in (3, 4):
        raise InputError(f"image has {n} components per pixel; expected grayscale, RGB or RGBA")
    channels = [sitk.Cast(sitk.VectorIndexSelectionCast(image, i), sitk.sitkFloat32) for i in range(3)]
    gray = channels[0] * 0.299 + channels[1] * 0.587 + channels[2] * 0.114
    gray.CopyInformation(channels[0])
    return gray


def validate_image(image, source: str = "image"):
    """Check that an image is usable for inference and return it unchanged.

    :raises InputError: if the image is empty (a zero-sized axis or all voxels equal), has
        more than three dimensions, is smaller than :data:`MIN_SIDE` pixels along either of
        its two largest axes (a 2x1 slice, a 1x1x2 volume), has more than :data:`MAX_VOXELS`
        voxels, or contains NaN or infinite values.
    """
    import SimpleITK as sitk

    dim = image.GetDimension()
    if dim > 3:
        sizes = "x".join(str(s) for s in image.GetSize())
        raise InputError(f"{source}: {dim}D data ({sizes}) is not supported; give one 2D slice or one 3D volume")
    if dim < 2:
        raise InputError(f"{source}: {dim}D data is not an image")
    size = image.GetSize()
    if any(s == 0 for s in size):
        raise InputError(f"{source}: image is empty (size {_size_text(size)})")
    if sorted(size)[-2] < MIN_SIDE:
        raise InputError(f"{source}: image of {_size_text(size)} pixels is too small; at least {MIN_SIDE} pixels "
                         f"per in-plane side are needed")
    n = int(np.prod(size, dtype=np.float64))
    if n > MAX_VOXELS:
        raise InputError(f"{source}: image of {_size_text(size)} voxels is larger than the limit of {MAX_VOXELS} voxels")
    arr = sitk.GetArrayViewFromImage(image)
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise InputError(f"{source}: image contains {bad} NaN or infinite voxel values")
    if arr.size == 0 or float(arr.max()) == float(arr.min()):
        raise InputError(f"{source}: image is empty (every voxel has the same value, {float(arr.min()):g}): "
                         "no contrast to work with")
    return image


def _size_text(size) -> str:
    return " x ".join(str(int(s)) for s in size)


def read_image(path) -> "SimpleITK.Image":
    """Read a 2D slice or a 3D volume as a scalar float32 ``SimpleITK.Image``.

    A 3D file with a single slice is returned as 3D (its geometry is kept); callers decide
    whether it is a slice. Geometry: spacing (mm), origin (mm) and direction in LPS. The file
    is checked first (:func:`check_image_file`), so nothing large is allocated for a lying
    header and a truncated file is never read as zeros.

    :param path: a file with one of :data:`SUPPORTED` suffixes, or a DICOM series folder.
    :raises InputError: missing path, unsupported file type, unreadable, truncated or
        corrupt file, a header larger than :data:`MAX_VOXELS`, NaN / infinite values (also
        in NIfTI files, whose reader would turn them into 0), no DICOM series in a folder or
        more than one, a DICOM file left out of the series, unevenly spaced DICOM slices, 4D
        data, or a degenerate image (see :func:`validate_image`).
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        with _quiet_native_stderr():
            series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise InputError(f"{path}: folder holds no DICOM series")
        if len(series) > 1:
            raise InputError(f"{path}: folder holds {len(series)} DICOM series; give a folder with exactly one")
        files = reader.GetGDCMSeriesFileNames(str(path), series[0])
        _check_dicom_files(path, files)
        reader.SetFileNames(files)
        reader.MetaDataDictionaryArrayUpdateOn()
        try:
            with _quiet_native_stderr():
                image = reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"{path}: DICOM series could not be read ({_first_line(exc)})") from None
        _check_dicom_spacing(path, reader, len(files))
    else:
        check_image_file(path)
        try:
            with _quiet_native_stderr():
                image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise InputError(f"{path.name}: truncated or corrupt image data (the header reads, the voxels do "
                             f"not: {_first_line(exc)})") from None
    if image.GetDimension() > 3:
        sizes = "x".join(str(s) for s in image.GetSize())
        raise InputError(f"{path.name}: {image.GetDimension()}D data ({sizes}) is not supported; give one 3D volume")
    image = to_grayscale(image)
    return validate_image(image, path.name)


def check_image_file(path) -> None:
    """Check an image file before its voxels are read (see the module docstring).

    NIfTI (``.nii``, ``.nii.gz``): header dimensions against :data:`MAX_VOXELS`, the data
    length against ``vox_offset + voxels x bytes per voxel`` (gzip: the whole stream is
    decompressed in 1 MiB chunks, CRC and end marker checked), and for float data types the
    raw values for NaN / infinity. Other volumes: ``ReadImageInformation`` size against
    :data:`MAX_VOXELS`. JPEG / PNG: a full decode with Pillow.

    :raises InputError: unsupported suffix, unreadable header, a header that claims more
        voxels than the limit or than the file holds, corrupt compressed data, NaN / infinite
        values, or an undecodable slice; each message names ``path``.
    """
    import SimpleITK as sitk

    path = Path(path)
    suffix = _suffix(path)
    if suffix not in SUPPORTED:
        raise InputError(f"{path.name}: unsupported file type '{suffix or path.name}'; expected one of "
                         + ", ".join(SUPPORTED) + " or a DICOM folder")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    if suffix in (".nii", ".nii.gz"):
        from .headers import check_nifti

        check_nifti(path, MAX_VOXELS)
    elif suffix in (".nrrd", ".nhdr", ".mha", ".mhd"):
        from .headers import check_text_header

        check_text_header(path, MAX_VOXELS)
    elif suffix in SLICE_SUFFIXES:
        _check_slice_decodes(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _quiet_native_stderr():
            reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path.name}: not a readable image ({_first_line(exc)})") from None
    size = reader.GetSize()
    n = float(np.prod([float(s) for s in size])) * max(1, reader.GetNumberOfComponents())
    if n > MAX_VOXELS:
        raise InputError(f"{path.name}: header claims {_size_text(size)} voxels, more than the limit of {MAX_VOXELS}; "
                         "refusing to read it")


def _check_dicom_files(folder: Path, files) -> None:
    """Refuse a DICOM folder holding DICOM files (``DICM`` at byte 128) that GDCM left out of
    its one series: a truncated or corrupt slice is dropped silently, leaving a gap."""
    used = {os.path.realpath(f) for f in files}
    left_out = []
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith(".") and os.path.realpath(f) not in used:
            with open(f, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    left_out.append(f.name)
    if left_out:
        shown = ", ".join(left_out[:5]) + (f" and {len(left_out) - 5} more" if len(left_out) > 5 else "")
        raise InputError(f"{folder}: {len(left_out)} DICOM file(s) cannot be read as part of the series "
                         f"(truncated or corrupt?): {shown}")


def _check_dicom_spacing(folder: Path, reader, n: int) -> None:
    """Refuse a series whose slice positions (0020|0032, along the slice normal) are not
    evenly spaced within 10%: a missing slice would silently stretch the volume."""
    if n < 3:
        return
    try:
        pos = np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")] for i in range(n)])
        ori = np.array([float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")])
    except (RuntimeError, ValueError, IndexError):
        return  # no positions: nothing to compare
    normal = np.cross(ori[:3], ori[3:6])
    gaps = np.diff(np.sort(pos @ normal))
    if gaps.size and (gaps.min() <= 0 or gaps.max() > 1.1 * np.median(gaps) or gaps.min() < 0.9 * np.median(gaps)):
        raise InputError(f"{folder}: DICOM slice positions are not evenly spaced (gaps from {gaps.min():.2f} to "
                         f"{gaps.max():.2f} mm): missing or duplicated slices")


def _check_slice_decodes(path: Path) -> None:
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > MAX_VOXELS:
                    raise InputError(f"{path.name}: image of {im.size[0]} x {im.size[1]} pixels is larger than the "
                                     f"limit of {MAX_VOXELS}")
                im.load()
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InputError(f"{path.name}: cannot be decoded completely (truncated or corrupt: {_first_line(exc)})") from None


class _quiet_native_stderr:
    """Context manager: silence what ITK / GDCM / MetaIO print on the process's stderr (file
    descriptor 2) while reading, so that a refused file gives one line, not a C++ dump."""

    def __enter__(self):
        import sys

        self._saved = None
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            self._saved = None
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        return False


def is_slice(image) -> bool:
    """True for a 2D image or a 3D image with exactly one voxel along some axis."""
    return image.GetDimension() == 2 or 1 in image.GetSize()


def _first_line(exc: Exception) -> str:
    import re

    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    out = lines[-1] if lines else type(exc).__name__
    for ln in lines:
        if "Description:" in ln or "ERROR" in ln.upper():
            out = ln.split("Description:")[-1].strip()
            break
    return re.sub(r"ITK ERROR: \w+\(0x[0-9a-fA-F]+\): ", "", out)


def file_mode() -> int:
    """The mode a new file gets under the process's umask (``0o666 & ~umask``), as ``open``
    would give it; :func:`tempfile.mkstemp` creates 0600 files, so atomic writes chmod."""
    try:  # Linux: read it without changing it (os.umask is process-wide, not thread-safe)
        with open("/proc/self/status", encoding="ascii") as fh:
            mask = next(int(ln.split()[1], 8) for ln in fh if ln.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def _publish(tmp: str, path: Path) -> None:
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)


def _write_error(path: Path, exc: OSError) -> InputError:
    why = exc.strerror or str(exc)
    return InputError(f"cannot write {path}: {why}")


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(path, exc) from None


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename,
    so a reader never sees a half-written file and a failure leaves the old file intact. The
    file gets the mode the umask allows (:func:`file_mode`).

    :raises InputError: the folder cannot be created or written, the disk is full, ...
        (naming ``path``, never the temporary file)."""
    path = Path(path)
    _make_parent(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        _publish(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise _write_error(path, exc) from None
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp) -> None:
    if tmp and os.path.exists(tmp):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def atomic_write_text(path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_image_atomic(image, path) -> None:
    """Write a SimpleITK image (NIfTI, NRRD, MHA; chosen by suffix) atomically, with the
    mode the umask allows.

    :raises InputError: the file cannot be written (naming ``path``)."""
    import SimpleITK as sitk

    path = Path(path)
    _make_parent(path)
    suffix = _suffix(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        with _quiet_native_stderr():
            sitk.WriteImage(image, tmp, True)
        _publish(tmp, path)
    except OSError as exc:
        _discard(tmp)
        raise _write_error(path, exc) from None
    except RuntimeError as exc:
        _discard(tmp)
        raise InputError(f"cannot write {path}: {_first_line(exc)}") from None
    except BaseException:
        _discard(tmp)
        raise
