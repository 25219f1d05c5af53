"""Checks of an image file made from its own header bytes, before SimpleITK reads it.

NRRD and MetaImage (:func:`check_text_header`): the sizes of the plain-text header against
a voxel-count limit and, for raw data in the same file, the file size against header +
voxels x bytes per voxel (ITK refuses other truncated NRRD / MetaImage data itself, but
allocates first and, for MetaImage, prints on stderr).

NIfTI (:func:`check_nifti`):

SimpleITK's NIfTI reader reads the missing part of a truncated file as zeros and turns NaN
and infinite voxels into 0, and it allocates the whole image a header claims before
finding that the data are missing. :func:`check_nifti` therefore parses the header
(NIfTI-1, 348 bytes, and NIfTI-2, 540 bytes, either byte order; field offsets from the
NIfTI-1 / NIfTI-2 specifications, nifti.nimh.nih.gov), refuses a voxel count above a
limit, compares the data length with ``vox_offset + voxels x bitpix / 8`` (a ``.nii.gz``
is decompressed completely in 1 MiB chunks with :mod:`gzip`, which checks the CRC-32,
the length and the end-of-stream marker), and scans float data for NaN / infinity.
Nothing of the volume is held in memory beyond one chunk.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import InputError

CHUNK = 1 << 20
# NIfTI datatype code -> numpy dtype (byte order added from the header) for the float types
FLOAT_TYPES = {16: "f4", 64: "f8", 32: "c8", 1792: "c16"}


def _parse_header(raw: bytes, name: str) -> dict:
    """``{"dims": tuple, "datatype", "bitpix", "vox_offset": int, "endian": "<" | ">"}``."""
    if len(raw) < 348:
        raise InputError(f"{name}: not a readable image (not NIfTI: only {len(raw)} bytes, a header needs 348)")
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", raw[:4])[0]
        if sizeof_hdr == 348:
            dim = struct.unpack(endian + "8h", raw[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", raw[70:74])
            vox_offset = struct.unpack(endian + "f", raw[108:112])[0]
            magic = raw[344:348]
            if magic != b"n+1\0":  # "ni1": header-only (.hdr/.img pair); none: ANALYZE 7.5
                raise InputError(f"{name}: not a readable image (not a single-file NIfTI-1 image: magic {magic!r})")
            break
        if sizeof_hdr == 540:
            if len(raw) < 540:
                raise InputError(f"{name}: truncated NIfTI-2 header ({len(raw)} of 540 bytes)")
            datatype, bitpix = struct.unpack(endian + "2h", raw[12:16])
            dim = struct.unpack(endian + "8q", raw[16:80])
            vox_offset = struct.unpack(endian + "q", raw[168:176])[0]
            break
    else:
        raise InputError(f"{name}: not a readable image (not NIfTI: the header size field is neither 348 nor 540)")
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise InputError(f"{name}: NIfTI header gives {ndim} dimensions (1 to 7 allowed)")
    dims = tuple(int(d) for d in dim[1:ndim + 1])
    if any(d <= 0 for d in dims):
        raise InputError(f"{name}: NIfTI header gives a size of {' x '.join(map(str, dims))} (every axis needs >= 1 voxel)")
    if bitpix <= 0 or bitpix % 8:
        raise InputError(f"{name}: NIfTI header gives {bitpix} bits per voxel")
    if not np.isfinite(vox_offset) or vox_offset < 0:
        raise InputError(f"{name}: NIfTI header gives a data offset of {vox_offset}")
    return {"dims": dims, "datatype": int(datatype), "bitpix": int(bitpix), "vox_offset": int(vox_offset),
            "endian": endian}


def _chunks(path: Path, gz: bool):
    """Yield the file's (decompressed) bytes in chunks; turn stream errors into InputError."""
    try:
        if gz:
            with gzip.open(path, "rb") as fh:
                while True:
                    block = fh.read(CHUNK)
                    if not block:
                        return
                    yield block
        else:
            with open(path, "rb") as fh:
                while True:
                    block = fh.read(CHUNK)
                    if not block:
                        return
                    yield block
    except EOFError:
        raise InputError(f"{path.name}: truncated gzip stream (the compressed file ends before its end marker); "
                         "the file is incomplete") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(f"{path.name}: not a readable image (corrupt gzip data: {exc})") from None
    except OSError as exc:  # older Pythons raise a plain OSError for a bad gzip header / CRC
        raise InputError(f"{path.name}: not a readable image ({exc.strerror or exc})") from None


def check_nifti(path, max_voxels: int) -> None:
    """Refuse a NIfTI file whose header or data cannot be trusted (see the module docstring).

    :param path: a ``.nii`` or ``.nii.gz`` file.
    :param max_voxels: the largest number of voxels (times components) accepted.
    :raises InputError: not NIfTI, a header with impossible fields, more voxels than
        ``max_voxels``, fewer data bytes than the header needs, a truncated or corrupt gzip
        stream, or NaN / infinite voxel values; the message names the file and the numbers.
    """
    path = Path(path)
    gz = path.name.lower().endswith(".gz")
    name = path.name
    head = b""
    stream = _chunks(path, gz)
    for block in stream:
        head += block
        if len(head) >= 540:
            break
    hdr = _parse_header(head, name)
    dims, bpv = hdr["dims"], hdr["bitpix"] // 8
    n_vox = 1
    for d in dims:
        n_vox *= d
    size_text = " x ".join(map(str, dims))
    if n_vox > max_voxels:
        raise InputError(f"{name}: header claims {size_text} voxels, more than the limit of {max_voxels}; "
                         "refusing to read it")
    need = hdr["vox_offset"] + n_vox * bpv
    if not gz:
        have = path.stat().st_size
        if have < need:
            raise InputError(f"{name}: truncated NIfTI file: {have} bytes, but its header ({size_text} voxels of "
                             f"{bpv} bytes from offset {hdr['vox_offset']}) needs {need}")
    float_code = FLOAT_TYPES.get(hdr["datatype"])
    dtype = np.dtype(hdr["endian"] + float_code) if float_code else None
    # walk the data: count bytes (gzip) and scan float values for NaN / infinity
    pos, bad, carry = 0, 0, b""
    data_start, data_end = hdr["vox_offset"], need

    def scan(block: bytes, offset: int) -> int:
        nonlocal carry
        lo, hi = max(data_start, offset), min(data_end, offset + len(block))
        if dtype is None or hi <= lo:
            return 0
        buf = carry + block[lo - offset:hi - offset]
        usable = len(buf) - len(buf) % dtype.itemsize
        carry = buf[usable:]
        vals = np.frombuffer(buf[:usable], dtype=dtype)
        return int(np.count_nonzero(~np.isfinite(vals)))

    if dtype is not None or gz:
        bad += scan(head, 0)
        pos = len(head)
        for block in stream:
            bad += scan(block, pos)
            pos += len(block)
            if not gz and pos >= data_end:
                break
        if gz and pos < need:
            raise InputError(f"{name}: truncated NIfTI data: {pos} bytes after decompression, but its header "
                             f"({size_text} voxels of {bpv} bytes from offset {hdr['vox_offset']}) needs {need}")
    else:
        stream.close()
    if bad:
        raise InputError(f"{name}: image contains {bad} NaN or infinite voxel values")


NRRD_BYTES = (("long long", 8), ("longlong", 8), ("int64", 8), ("double", 8), ("char", 1), ("int8", 1),
              ("short", 2), ("int16", 2), ("float", 4), ("int", 4))
MET_BYTES = {"CHAR": 1, "UCHAR": 1, "SHORT": 2, "USHORT": 2, "INT": 4, "UINT": 4, "LONG": 4, "ULONG": 4,
             "LONG_LONG": 8, "ULONG_LONG": 8, "FLOAT": 4, "DOUBLE": 8}


def _text_header(path: Path, nrrd: bool):
    """``(fields, header_length_in_bytes)`` of a NRRD / MetaImage header (at most 64 KiB read)."""
    with open(path, "rb") as fh:
        head = fh.read(65536)
    fields, pos = {}, 0
    lines = head.split(b"\n")
    for i, raw in enumerate(lines):
        pos += len(raw) + 1
        line = raw.decode("latin-1").strip()
        if i == 0 and nrrd:
            if not line.startswith("NRRD"):
                raise InputError(f"{path.name}: not a readable image (no NRRD magic line)")
            continue
        if nrrd and line == "":
            break
        if line.startswith("#") or not line:
            continue
        sep = ":" if nrrd else "="
        if sep not in line:
            continue
        key, value = line.split(sep, 1)
        key = key.strip().lower()
        fields[key] = value.strip().lstrip("=").strip()
        if not nrrd and key == "elementdatafile":
            break
    else:
        pos = None  # header does not end within what was read
    return fields, pos


def check_text_header(path, max_voxels: int) -> None:
    """Refuse a NRRD (``.nrrd``, ``.nhdr``) or MetaImage (``.mha``, ``.mhd``) file whose header
    claims more than ``max_voxels`` voxels, or whose attached raw data are shorter than the
    header says.

    :raises InputError: naming the file, the claimed size and the bytes present."""
    path = Path(path)
    name = path.name
    nrrd = name.lower().endswith((".nrrd", ".nhdr"))
    fields, header_len = _text_header(path, nrrd)
    sizes_text = fields.get("sizes" if nrrd else "dimsize")
    if not sizes_text:
        return  # let ITK say what is wrong
    try:
        sizes = [int(float(v)) for v in sizes_text.split()]
    except ValueError:
        raise InputError(f"{name}: not a readable image (header sizes '{sizes_text[:80]}')") from None
    channels = 1
    if not nrrd:
        try:
            channels = max(1, int(fields.get("elementnumberofchannels", "1")))
        except ValueError:
            channels = 1
    n = channels
    for v in sizes:
        if v <= 0:
            raise InputError(f"{name}: header gives a size of {' x '.join(map(str, sizes))} (every axis needs >= 1 voxel)")
        n *= v
    size_text = " x ".join(map(str, sizes))
    if n > max_voxels:
        raise InputError(f"{name}: header claims {size_text} voxels, more than the limit of {max_voxels}; "
                         "refusing to read it")
    if nrrd:
        attached = "data file" not in fields and "datafile" not in fields
        raw = fields.get("encoding", "").lower() == "raw"
        t = fields.get("type", "").lower()
        bpv = next((b for k, b in NRRD_BYTES if k in t), None)
    else:
        attached = fields.get("elementdatafile", "").upper() == "LOCAL"
        raw = fields.get("compresseddata", "false").lower() != "true"
        bpv = MET_BYTES.get(fields.get("elementtype", "").upper().replace("MET_", ""))
    if attached and raw and bpv and header_len is not None:
        need, have = header_len + n * bpv, path.stat().st_size
        if have < need:
            raise InputError(f"{name}: truncated image file: {have} bytes, but its header ({size_text} voxels of "
                             f"{bpv} bytes) needs {need}")
