"""Safe downloads of model folders into the per-user cache (standard library only).

A download never writes outside its own temporary folder ``<cache>/.download-<pid>-<random>``:
every file name is checked to be a plain name (:func:`check_file_name`) before it is used,
every file is streamed with a size cap (``max_bytes``; :data:`MAX_CARD_BYTES` for the card,
:data:`MAX_FILE_BYTES` or the card's declared size for the others), a read timeout
(:data:`READ_TIMEOUT_S`) and an overall deadline (:data:`DEADLINE_S`, environment
``BRAINSPINEAI_DOWNLOAD_DEADLINE_S``), and every file's sha256 is checked; only then is the
folder published under its final name by one ``rename``. If another process published the same
folder meanwhile, that folder is verified and reused (two processes may download one model at
once). Partial downloads are removed on errors, on ``Ctrl-C``, on ``SIGTERM`` (a handler that
removes them and then lets the signal end the process) and at exit; folders left by a process
killed outright (``SIGKILL``, power loss) are removed by :func:`clean_stale` on the next start
(their process is dead, or they are older than the deadline plus ten minutes).

This module imports nothing from the rest of the package (the catalogue imports it).
"""
from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

from .errors import ChecksumError, ModelError

MAX_CARD_BYTES = 1 << 20          # 1 MiB: a model card is a few KiB
MAX_FILE_BYTES = 2 << 30          # 2 GiB per file unless the card declares a smaller size
MAX_FILES = 32                    # files one model folder may list
READ_TIMEOUT_S = 60.0             # one read from the server
DEADLINE_S = 3600.0               # the whole download of one model
TEMP_PREFIX = ".download-"
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
_HEX_RE = re.compile(r"[0-9a-f]{64}")


def check_file_name(name, what: str = "file name") -> str:
    """``name`` if it is a plain file name: 1-128 letters, digits, ``.``, ``-``, ``_``, not
    ``.`` or ``..`` (so no ``/``, ``\\``, drive letter, absolute path or NUL).

    :raises ModelError: any other value (also a non-string)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name in (".", ".."):
        raise ModelError(f"{what} {name!r} is not a plain file name (letters, digits, '.', '-', '_')")
    return name


def check_id(value, what: str = "model id") -> str:
    """``value`` if it is a valid model id: 1-128 letters, digits, ``.``, ``-``, ``_``, not
    ``.`` or ``..``. :raises ModelError: otherwise."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value) or value in (".", ".."):
        raise ModelError(f"{what} {str(value)[:80]!r} is not valid (letters, digits, '.', '-', '_')")
    return value


def check_sha256(value, what: str = "sha256") -> str:
    """``value`` if it is a 64-digit lower-case hex sha256. :raises ModelError: otherwise."""
    if not isinstance(value, str) or not _HEX_RE.fullmatch(value):
        raise ModelError(f"{what} {str(value)[:80]!r} is not a sha256 hex digest")
    return value


def sha256_file(path) -> str:
    """Hex sha256 digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def umask() -> int:
    """The process umask (read without changing it for longer than two calls)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_dir(prefix: str, parent: Path) -> Path:
    """A unique temporary folder in ``parent`` with the permissions a plain mkdir gives
    (``tempfile.mkdtemp`` makes it private, which a published folder must not stay)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def deadline_s() -> float:
    """The overall download deadline in seconds (``BRAINSPINEAI_DOWNLOAD_DEADLINE_S`` or :data:`DEADLINE_S`)."""
    try:
        value = float(os.environ.get("BRAINSPINEAI_DOWNLOAD_DEADLINE_S", DEADLINE_S))
    except ValueError:
        value = DEADLINE_S
    return value if value > 0 else DEADLINE_S


# --------------------------------------------------------------------------------------
# Partial downloads: removed on SIGTERM, at exit, and by the next start


_ACTIVE: set = set()
_LOCK = threading.RLock()  # re-entrant: the SIGTERM handler may interrupt its holder


def _remove_active() -> None:
    with _LOCK:
        folders = list(_ACTIVE)
        _ACTIVE.clear()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_remove_active)


def _on_sigterm(signum, frame, previous=None):
    _remove_active()
    if callable(previous):
        signal.signal(signal.SIGTERM, previous)
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_sigterm() -> None:
    """Remove partial downloads when SIGTERM arrives (main thread only; a handler the
    application installed is called afterwards)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return
    current = signal.getsignal(signal.SIGTERM)
    if getattr(current, "_brainspineai", False) or current is signal.SIG_IGN or current is None:
        return  # ours already, ignored, or a handler not installed from Python (left alone)

    def handler(signum, frame, previous=current):
        _on_sigterm(signum, frame, previous)

    handler._brainspineai = True
    try:
        signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        pass


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows: rely on age
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def clean_stale(cache_root) -> list:
    """Remove the ``.download-<pid>-*`` folders in ``cache_root`` left by dead processes or
    older than the deadline plus ten minutes. :returns: the folders removed."""
    removed = []
    root = Path(cache_root)
    if not root.is_dir():
        return removed
    limit = deadline_s() + 600
    for sub in root.iterdir():
        if not sub.name.startswith(TEMP_PREFIX) or sub.is_symlink() or not sub.is_dir():
            continue
        pid_text = sub.name[len(TEMP_PREFIX):].split("-", 1)[0]
        try:
            age = time.time() - sub.stat().st_mtime
        except OSError:
            continue
        dead = pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text))
        if dead or age > limit or not pid_text.isdigit():
            shutil.rmtree(sub, ignore_errors=True)
            removed.append(sub)
    return removed


# --------------------------------------------------------------------------------------
# Streaming with caps


class _Deadline:
    def __init__(self, url: str, seconds: float):
        self.url, self.seconds, self.end = url, seconds, time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise ModelError(f"download from {self.url} did not finish within {self.seconds:g} s; try again later")
        return left


def _stream(url: str, sink, max_bytes: int, deadline: _Deadline, label: str) -> int:
    """Copy ``url`` into ``sink.write`` (at most ``max_bytes``). :returns: bytes copied."""
    import urllib.error
    import urllib.request

    def fail(reason) -> ModelError:
        return ModelError(f"could not download the {label} from {url}: {reason}")

    try:
        with urllib.request.urlopen(url, timeout=min(READ_TIMEOUT_S, deadline.remaining())) as r:
            declared = r.headers.get("Content-Length") if getattr(r, "headers", None) is not None else None
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise fail(f"it is {int(declared)} bytes, more than the {max_bytes} bytes allowed")
            read = getattr(r, "read1", r.read)
            total = 0
            while True:
                deadline.remaining()
                block = read(1 << 16)
                if not block:
                    return total
                total += len(block)
                if total > max_bytes:
                    raise fail(f"more than the {max_bytes} bytes allowed")
                sink(block)
    except ModelError:
        raise
    except urllib.error.HTTPError as exc:
        raise fail(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise fail(exc.reason) from None
    except (OSError, ValueError) as exc:  # timeouts, resets, bad URLs
        deadline.remaining()
        raise fail(exc.__class__.__name__ if not str(exc) else exc) from None
    except Exception as exc:  # noqa: BLE001 - http.client raises its own types (IncompleteRead, BadStatusLine)
        raise fail(f"{exc.__class__.__name__} {exc}"[:200]) from None


def fetch_bytes(url: str, max_bytes: int = MAX_CARD_BYTES, label: str = "model card", deadline=None) -> bytes:
    """The content of ``url`` (at most ``max_bytes``, within the deadline).

    :raises ModelError: the download fails, is too large or too slow."""
    chunks = []
    _stream(url, chunks.append, max_bytes, deadline or _Deadline(url, deadline_s()), label)
    return b"".join(chunks)


def _verify_folder(folder: Path, card_bytes: bytes, files: dict) -> bool:
    """True when ``folder`` holds exactly this card and files with these digests."""
    try:
        if (folder / "model.json").read_bytes() != card_bytes:
            return False
        return all((folder / n).is_file() and not (folder / n).is_symlink() and sha256_file(folder / n) == d
                   for n, d in files.items())
    except OSError:
        return False


def download_folder(base: str, final: Path, card_bytes: bytes, files: dict, sizes: dict | None = None,
                    deadline=None) -> Path:
    """Download ``files`` (plain name -> sha256) from ``base/<name>`` beside the card
    ``card_bytes`` into a temporary folder next to ``final``, verify them, publish the folder
    as ``final`` (one rename) and return it. An existing ``final`` holding the same card and
    files is reused; one that does not is replaced.

    :param sizes: optional plain name -> exact size in bytes (the cap for that file).
    :raises ModelError: a name is not plain, a download fails, is too large or too slow.
    :raises ChecksumError: a file does not match its sha256.
    """
    final = Path(final)
    cache_root = final.parent
    check_file_name(final.name, "model folder")
    if len(files) > MAX_FILES:
        raise ModelError(f"{base}: the model card lists {len(files)} files (at most {MAX_FILES})")
    for name, digest in files.items():
        if check_file_name(name) == "model.json":
            raise ModelError(f"{base}: the model card lists itself (model.json) as one of the model's files")
        check_sha256(digest, f"sha256 of {name}")
    if _verify_folder(final, card_bytes, files):
        return final
    deadline = deadline or _Deadline(base, deadline_s())
    cache_root.mkdir(parents=True, exist_ok=True)
    clean_stale(cache_root)
    _install_sigterm()
    tmp = make_temp_dir(f"{TEMP_PREFIX}{os.getpid()}-", cache_root)
    with _LOCK:
        _ACTIVE.add(tmp)
    try:
        (tmp / "model.json").write_bytes(card_bytes)
        for name, digest in files.items():
            cap = MAX_FILE_BYTES
            declared = (sizes or {}).get(name)
            if isinstance(declared, int) and not isinstance(declared, bool) and 0 <= declared < cap:
                cap = declared
            url = f"{base}/{name}"
            h = hashlib.sha256()
            with open(tmp / name, "xb") as fh:  # "x": never through an existing entry (link)

                def sink(block, fh=fh, h=h):
                    h.update(block)
                    fh.write(block)
                size = _stream(url, sink, cap, deadline, f"file {name}")
            if h.hexdigest() != digest:
                raise ChecksumError(f"{url}: checksum mismatch (sha256 {h.hexdigest()[:12]}..., the model card says "
                                    f"{digest[:12]}...); the download is corrupted or was replaced")
            if isinstance(declared, int) and size != declared:
                raise ModelError(f"{url}: {size} bytes, the model card says {declared}")
        mode = 0o666 & ~umask()
        for f in tmp.iterdir():
            os.chmod(f, mode)
        try:
            os.rename(tmp, final)
        except OSError:
            if _verify_folder(final, card_bytes, files):  # another process published it meanwhile
                return final
            aside = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-old-", dir=cache_root))
            try:
                os.rename(final, aside / "old")
                os.rename(tmp, final)
            except OSError as exc:
                if not _verify_folder(final, card_bytes, files):
                    raise ModelError(f"cannot publish the model downloaded from {base} in {cache_root} "
                                     f"({exc.strerror or exc})") from None
            finally:
                shutil.rmtree(aside, ignore_errors=True)
        return final
    finally:
        with _LOCK:
            _ACTIVE.discard(tmp)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def fetch_model(url: str, cache_root, parse) -> Path:
    """Download the model folder at ``url`` (``.../model.json`` or the folder's URL) into
    ``cache_root/<id>-<card sha256[:12]>`` with :func:`download_folder`; ``parse(card_bytes,
    card_url)`` checks the card and returns ``(id, {name: sha256}, sizes or None)``.

    :raises ModelError: bad URL, card or download. :raises ChecksumError: a file mismatch.
    """
    base = url.rstrip("/")
    if base.endswith("/model.json"):
        base = base[: -len("/model.json")]
    cache_root = Path(cache_root)
    clean_stale(cache_root)
    deadline = _Deadline(base, deadline_s())  # one deadline for the card and every file
    data = fetch_bytes(f"{base}/model.json", MAX_CARD_BYTES, "model card", deadline)
    model_id, files, sizes = parse(data, f"{base}/model.json")
    final = cache_root / f"{check_id(model_id)}-{hashlib.sha256(data).hexdigest()[:12]}"
    try:
        return download_folder(base, final, data, files, sizes, deadline)
    except OSError as exc:
        raise ModelError(f"cannot store the model from {url} in {cache_root} ({exc.strerror or exc})") from None
