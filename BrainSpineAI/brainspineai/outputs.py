"""Checks of a command's output paths, made before anything is computed.

:func:`check_outputs` refuses an output that is one of the inputs (compared as resolved
paths, so symbolic links, ``..`` and other spellings of one file are caught, and with
:func:`os.path.samefile` for hard links), an output inside an input folder (a dataset, a
DICOM series), two outputs on one path, an output that is a folder or not a regular file
(``/dev/null``, a FIFO), and an output that cannot be created: a path under a file, or a
folder that is not writable (tested with ``os.access`` and by creating and removing a
temporary file there, which also catches a read-only file system).
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from .errors import InputError


def _resolved(p: Path) -> Path:
    try:
        return Path(os.path.realpath(os.path.abspath(str(p))))
    except (OSError, ValueError):
        return Path(os.path.abspath(str(p)))


def same_file(a, b) -> bool:
    """True when ``a`` and ``b`` name one file (resolved path, or ``os.path.samefile``)."""
    a, b = Path(a), Path(b)
    if _resolved(a) == _resolved(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    rp, rf = _resolved(path), _resolved(folder)
    return rf in rp.parents


def _existing_ancestor(path: Path) -> Path:
    p = Path(os.path.abspath(str(path))).parent
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _check_writable(label: str, path: Path) -> None:
    where = f"{label} {path}" if label else str(path)
    if os.path.lexists(path):
        if path.is_dir():
            raise InputError(f"{where}: is a folder; give a file name")
        if path.exists() and not stat.S_ISREG(path.stat().st_mode):
            raise InputError(f"{where}: is not a regular file (a device, pipe or socket); give a file name")
    anc = _existing_ancestor(path)
    if not anc.is_dir():
        raise InputError(f"{where}: cannot be created: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(f"{where}: folder {anc} is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=".brainspineai-probe.", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{where}: folder {anc} is not writable ({exc.strerror or exc})") from None


def check_outputs(outputs, inputs=()) -> None:
    """Refuse output paths that would destroy an input or cannot be written (see the module
    docstring). Nothing is created.

    :param outputs: ``(label, path)`` pairs, e.g. ``("--json", args.json)``; ``None`` / empty
        paths and ``-`` (stdout) are skipped.
    :param inputs: input files or folders (``None`` and paths that do not exist, such as
        model ids, skipped).
    :raises InputError: naming the option and the path as the user gave them.
    """
    outs = [(label, Path(str(p))) for label, p in outputs if p and str(p) != "-"]
    ins = [Path(str(p)) for p in inputs if p and os.path.lexists(str(p))]  # ids / URLs are not files
    seen = []
    for label, path in outs:
        where = f"{label} {path}" if label else str(path)
        for other_label, other in seen:
            if same_file(path, other):
                raise InputError(f"{where}: the same file as {other_label} {other}; give each output its own path")
        for inp in ins:
            if same_file(path, inp):
                raise InputError(f"{where}: is the input {inp}; refusing to overwrite an input")
            if inp.is_dir() and _inside(path, inp):
                if os.path.lexists(path):
                    raise InputError(f"{where}: is a file of the input folder {inp}; refusing to overwrite an input")
                raise InputError(f"{where}: lies inside the input folder {inp}; write outputs elsewhere")
        _check_writable(label, path)
        seen.append((label, path))
