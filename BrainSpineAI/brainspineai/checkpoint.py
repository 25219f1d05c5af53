"""Training checkpoints and the run lock: safe to load, atomic to write, one run per model.

Used by :func:`brainspineai.engine.fit` (and so by every pipeline that trains on it):

- :func:`write_checkpoint` saves with ``torch.save`` into a uniquely named temporary file in
  the work folder (``tempfile``), flushes it to disk, then ``os.replace``-s it over
  ``last.pt``; any write error (a full disk, a read-only folder) removes the temporary file,
  keeps the last good checkpoint, and is raised as one :class:`BrainSpineAIError` line.
  Permissions follow the umask, as for a plain ``open``.
- :func:`read_checkpoint` loads with ``torch.load(weights_only=True)``: tensors and plain
  values (numbers, strings, lists, dicts) only, so a crafted ``last.pt`` cannot run code
  (PyTorch's restricted unpickler, see ``torch.serialization``); configurations and
  histories are stored in it as JSON strings and random states as uint8 tensors.
- :func:`run_lock` holds an exclusive lock on ``<out>.work/lock`` for the whole run
  (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows; released by the kernel when the
  process dies, so a killed run leaves no stale lock), refuses a second run on the same
  ``--out`` at once, removes what a killed run left behind (temporary checkpoint files, a
  half-written model folder beside ``--out``), and turns SIGTERM into :class:`Terminated`,
  so that the files being written are cleaned up before the process ends.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path

from .errors import BrainSpineAIError, InputError

CHECKPOINT_NAME = "last.pt"
LOCK_NAME = "lock"
FORMAT = 2  # 2: configuration and history as JSON strings, loadable with weights_only=True
_TMP_PREFIX = f".{CHECKPOINT_NAME}."
_TMP_SUFFIX = ".tmp"
_MKDTEMP = r"[a-z0-9_]{8}"  # tempfile's random part (catalogue.write_model_folder's temporary folders)

_held: dict = {}  # lock path -> {"fd", "depth", "handler": (previous SIGTERM handler,) when one was installed}
_held_guard = threading.Lock()


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived during a run (a ``KeyboardInterrupt``, so that cleanup code that
    catches ``Exception`` does not swallow it). ``signum`` is the signal number."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = int(signum)


def work_dir(out_dir) -> Path:
    """``<out>.work``: the checkpoint and the lock of the run writing model folder ``out``."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".work")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return exc.strerror or os.strerror(exc.errno)
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[0][:160] if lines else type(exc).__name__)


def write_checkpoint(state: dict, path) -> None:
    """Save ``state`` (tensors and plain values only) to ``path`` atomically.

    :raises BrainSpineAIError: the file could not be written (the message names ``path``
        and the cause; an older ``path`` is left as it was and no temporary file remains).
    """
    import torch

    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise BrainSpineAIError(f"cannot write the checkpoint {path}: {_why(exc)}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, (OSError, RuntimeError)):
            kept = "; the last good checkpoint is kept" if path.is_file() else ""
            raise BrainSpineAIError(f"cannot write the checkpoint {path}: {_why(exc)}{kept}") from None
        raise


def read_checkpoint(path) -> dict:
    """Load a checkpoint written by :func:`write_checkpoint` with ``weights_only=True``.

    :returns: the state dict (``config`` and ``history`` still JSON strings).
    :raises InputError: unreadable, corrupt, of an older format, or holding anything but
        tensors and plain values (nothing of it is used then).
    """
    import torch

    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any failure of the restricted unpickler: refuse, one line
        raise InputError(f"{path}: not a checkpoint that can be resumed safely (corrupt, or holding objects "
                         "other than tensors and plain values); nothing was loaded. Delete it or use a new "
                         "--out") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT or not isinstance(ck.get("config"), str):
        raise InputError(f"{path}: a checkpoint of another format or version; delete it or use a new --out")
    return ck


def comparable_config(config: dict, processes: int) -> dict:
    """The settings a checkpoint is resumed under: ``config`` without ``device`` (a run
    may move to another device), made plain JSON (tuples as lists), plus the process count
    (it changes the batch per optimiser step)."""
    plain = json.loads(json.dumps({k: v for k, v in config.items() if k != "device"}, default=str))
    plain["processes"] = int(processes)
    return plain


def _short(value) -> str:
    s = json.dumps(value, default=str)
    return s if len(s) <= 40 else s[:37] + "..."


def check_config(ck: dict, path, pipeline: str, config: dict) -> None:
    """Refuse a checkpoint made by another pipeline or under other settings.

    :param config: :func:`comparable_config` of this run.
    :raises InputError: naming every setting that differs, with both values.
    """
    theirs_pipeline = ck.get("pipeline")
    if theirs_pipeline != pipeline:
        raise InputError(f"{path}: checkpoint of pipeline '{theirs_pipeline}', not '{pipeline}'; use a new --out")
    try:
        theirs = json.loads(ck["config"])
    except (TypeError, ValueError):
        theirs = None
    if not isinstance(theirs, dict):
        raise InputError(f"{path}: checkpoint without a readable configuration; delete it or use a new --out")
    if theirs != config:
        diff = sorted(k for k in set(theirs) | set(config) if theirs.get(k) != config.get(k))
        said = ", ".join(f"{k} {_short(config.get(k))} (checkpoint {_short(theirs.get(k))})" for k in diff[:8])
        more = f" and {len(diff) - 8} more" if len(diff) > 8 else ""
        raise InputError(f"{path}: checkpoint was made with other settings: {said}{more}; resume with the same "
                         "options or use a new --out")


def load_for_resume(out_dir, pipeline: str, config: dict, processes: int) -> dict | None:
    """The checked checkpoint of ``out_dir``'s run, or None when there is none.

    The pipeline and configuration are compared before anything of the checkpoint is used
    (see :func:`check_config`); ``config`` is the raw configuration (see
    :func:`comparable_config`).
    :raises InputError: see :func:`read_checkpoint` and :func:`check_config`.
    """
    path = work_dir(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    ck = read_checkpoint(path)
    check_config(ck, path, pipeline, comparable_config(config, processes))
    return ck


def clean_leftovers(out_dir) -> list:
    """Remove what a killed run on ``out_dir`` left: temporary checkpoint files in the work
    folder and temporary model folders beside ``out_dir`` (see
    ``catalogue.write_model_folder``). A previous model moved aside but not replaced
    (killed between the two renames) is put back. Call only while holding :func:`run_lock`.

    :returns: the paths removed or restored.
    """
    out_dir = Path(out_dir)
    work = work_dir(out_dir)
    done = []
    if work.is_dir():
        done += clean_leftovers_in_work(work)
    parent, name = out_dir.parent, re.escape(out_dir.name)
    if parent.is_dir():
        new, old = re.compile(rf"\.{name}\.{_MKDTEMP}"), re.compile(rf"\.{name}\.old\.{_MKDTEMP}")
        for d in sorted(parent.iterdir()):
            if not d.is_dir() or d.is_symlink():
                continue
            if old.fullmatch(d.name) and not out_dir.exists():
                with contextlib.suppress(OSError):
                    os.replace(d, out_dir)
                    done.append(d)
            elif new.fullmatch(d.name) or old.fullmatch(d.name):
                shutil.rmtree(d, ignore_errors=True)
                done.append(d)
    return done


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)


def _sigterm_handler(work: Path):
    fired = []

    def handler(signum, frame):
        if fired:  # already unwinding; a second SIGTERM does not interrupt the cleanup
            return
        fired.append(signum)
        kept = (f"the last finished epoch is kept in {work / CHECKPOINT_NAME}: continue with --resume"
                if (work / CHECKPOINT_NAME).is_file() else "no epoch had finished, nothing was kept")
        raise Terminated(f"training stopped by {signal.Signals(signum).name}; {kept}", signum)
    return handler


@contextlib.contextmanager
def run_lock(out_dir, rank: int | None = None):
    """Hold the lock of the run writing model folder ``out_dir`` (re-entrant in a process).

    On first entry: creates ``<out>.work``, locks ``<out>.work/lock`` (writing this process
    id in it), removes a killed run's leftovers (:func:`clean_leftovers`) and, in the main
    thread, makes SIGTERM raise :class:`Terminated`. On last exit: restores the SIGTERM
    handler, unlocks, and removes the work folder again when it holds no checkpoint. Under
    ``torchrun`` only process 0 (``rank``, default ``$RANK``) locks; it alone writes.

    :raises InputError: another run holds the lock, or ``<out>.work`` cannot be created.
    """
    if rank is None:
        rank = int(os.environ.get("RANK", "0") or 0)
    if rank != 0:
        yield
        return
    work = work_dir(out_dir)
    key = str(work.absolute() / LOCK_NAME)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry["depth"] += 1
    if entry is None:
        entry = _acquire(Path(out_dir), work)
        with _held_guard:
            _held[key] = entry
    try:
        yield
    finally:
        with _held_guard:
            entry["depth"] -= 1
            last = entry["depth"] == 0
            if last:
                del _held[key]
        if last:
            _release(work, entry)


def _acquire(out_dir: Path, work: Path) -> dict:
    lock = work / LOCK_NAME
    made = [d for d in [work, *work.absolute().parents] if not d.exists()]  # removed again if left empty
    for _attempt in range(5):
        try:
            work.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise InputError(f"--out {out_dir}: cannot create its work folder {work} ({_why(exc)})") from None
        locked = _try_lock(fd)
        if not locked or _same_file(fd, lock):
            break
        # the run that held it removed the lock file meanwhile (see _release): lock the new one
        _unlock(fd)
        os.close(fd)
    if not locked:
        try:
            pid = os.read(fd, 32).decode("ascii", "replace").strip()
        except OSError:
            pid = ""
        os.close(fd)
        _remove_empty(made[1:])
        raise InputError(f"--out {out_dir}: another training run is writing this model"
                         f"{f' (process {pid})' if pid.isdigit() else ''}; wait for it to end or use another --out")
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    entry = {"fd": fd, "depth": 1, "handler": None, "made": made[1:]}
    try:
        clean_leftovers(out_dir)
        if threading.current_thread() is threading.main_thread():
            entry["handler"] = (signal.signal(signal.SIGTERM, _sigterm_handler(work)),)
    except BaseException:
        _release(work, entry)
        raise
    return entry


def _release(work: Path, entry: dict) -> None:
    fd = entry["fd"]
    if entry["handler"] is not None and threading.current_thread() is threading.main_thread():
        previous = entry["handler"][0]
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    with contextlib.suppress(OSError):
        clean_leftovers_in_work(work)
    empty = False
    with contextlib.suppress(OSError):
        empty = [p.name for p in work.iterdir()] == [LOCK_NAME]
    # the lock file never outlives the run (unlinked while still locked where the OS allows;
    # a run that opened it meanwhile sees another file under the name and retries, see _acquire)
    unlinked = False
    with contextlib.suppress(OSError):
        os.unlink(work / LOCK_NAME)
        unlinked = True
    _unlock(fd)
    with contextlib.suppress(OSError):
        os.close(fd)
    if not unlinked:  # Windows: an open file cannot be removed
        with contextlib.suppress(OSError):
            os.unlink(work / LOCK_NAME)
    if empty:
        _remove_empty([work, *entry["made"]])


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the open file ``fd`` (same device and inode)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _remove_empty(folders) -> None:
    for d in folders:  # deepest first
        try:
            d.rmdir()
        except OSError:
            return


def clean_leftovers_in_work(work: Path) -> list:
    """Remove temporary checkpoint files in ``work`` (see :func:`write_checkpoint`; also
    ``last.tmp``, the fixed name earlier versions used). :returns: the paths removed."""
    done = []
    for f in work.iterdir():
        if (f.name.startswith(_TMP_PREFIX) and f.name.endswith(_TMP_SUFFIX)) or f.name == "last.tmp":
            with contextlib.suppress(OSError):
                f.unlink()
                done.append(f)
    return done
