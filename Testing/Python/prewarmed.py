"""Test support: ``python -m brainspineai ...`` child processes forked from a process that has
already imported torch, MONAI and the other heavy packages (a "zygote", as Android and
multiprocessing's forkserver start processes).

Every background job of the Slicer modules, the warm worker and every training run of the
suite is its own process, and each spent 4-6 CPU-seconds importing the same packages before
doing a fraction of a second of work. A forked child is a real process (its own pid and
session, its own pipes, killed by the same signals, exit status and ``atexit`` as usual); what
differs from a fresh interpreter is only that those packages are already imported:

* the zygote imports third-party packages only, never ``brainspineai`` or the modules' code;
* warning filters that the packages add while being imported are removed again, so a child can
  only show *more* warnings than a fresh process (a test that asserts a clean stderr is stricter);
* a child's environment may differ from its zygote's only in variables that no preloaded
  package reads at import (``BRAINSPINEAI_*``, ``PYTEST_*``) and in the two that the child sets
  up itself (``PYTHONIOENCODING``, ``PYTHONUNBUFFERED``); any other difference gets a zygote of
  its own, started with that environment (at most :data:`MAX_ZYGOTES`, then a plain process);
* what the preloaded imports put in ``os.environ`` (MONAI's ``CUBLAS_WORKSPACE_CONFIG``, say)
  is put in the child's environment too, as its own imports would; logging handlers that
  packages made at import are pointed at the child's stdout / stderr;
* the child draws fresh seeds for NumPy's global generator and torch's default one, as a fresh
  process does (Python's ``random`` reseeds itself after a fork); the string hash seed is the
  zygote's, so every child iterates a set of strings in the same order;
* the umask is the caller's at the call; the child is killed if its zygote dies
  (``PR_SET_PDEATHSIG``), so a child is never left running unseen;
* the child ends as CPython ends (threads joined, ``atexit``, streams flushed, the same exit
  status) without tearing the preloaded modules down one by one (:func:`_run_and_exit`).

``python -m torch.distributed.run ... -m brainspineai ...`` (the DDP tests) is forked too, and so
are the workers it starts (``python -u -m brainspineai``): their environment differs from the
launcher's only in torchrun's per-worker variables; ``OMP_NUM_THREADS``, which torchrun sets to 1,
is applied in the worker as a fresh start applies it (torch's and the BLAS / OpenMP thread pools).

``BRAINSPINEAI_TEST_CLI=process`` (the suite's switch for real entry points everywhere, see
``conftest.run_cli``) turns this off: every job is then started as Slicer starts it.

Protocol (a Unix socket in a private temporary folder): the client sends one JSON line
(argv, env, cwd, new session) with its stdin / stdout / stderr as file descriptors
(``SCM_RIGHTS``); the zygote forks, replies with the child's pid, and when the child ends writes
its exit status (``-N``: killed by signal N, as :class:`subprocess.Popen` reports it)."""
from __future__ import annotations

import codecs
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

PRELOAD = ("numpy", "scipy.ndimage", "SimpleITK", "torch", "torchvision", "timm", "monai.networks.nets",
           "monai.transforms", "open_clip", "lightning_fabric", "sklearn.ensemble")
EMULATED = ("PYTHONIOENCODING", "PYTHONUNBUFFERED")  # the child sets up its stdio from these itself
MAX_ZYGOTES = 4
#: modules a child may run (``python [-u] -m MODULE``): the library, and torchrun, whose workers
#: (``python -u -m brainspineai``) are then forked from the same zygote (:func:`_fork_torchrun_workers`)
MODULES = ("brainspineai", "torch.distributed.run")
#: what torchrun sets for each worker (``LocalElasticAgent._start_workers``, torch 2.14; ``OMP_NUM_THREADS``
#: from ``torch.distributed.run``); read at run time, except the ranks by Lightning's ``rank_zero``
#: (redone in the child) and the thread count (:func:`_limit_threads`)
TORCHRUN_VARS = ("LOCAL_RANK", "RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "LOCAL_WORLD_SIZE", "WORLD_SIZE",
                 "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS",
                 "TORCH_NCCL_ASYNC_ERROR_HANDLING")
TORCHRUN_PREFIXES = ("TORCHELASTIC_",)


def _free_to_differ(key: str) -> bool:
    return key.startswith(("BRAINSPINEAI_", "PYTEST_")) or key in EMULATED


def _fingerprint(env: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in env.items() if not _free_to_differ(k)))


# --------------------------------------------------------------------------- the zygote process


def _serve(listener) -> dict:
    """Accept launch requests until a child is forked; return that child's request (in the child).
    The zygote itself never returns: it ends when its parent (the test process) is gone."""
    parent = os.getppid()
    children = {}  # pid -> connection that waits for its exit status
    while True:
        ready, _, _ = select.select([listener], [], [], 0.05)
        while children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            _log_usage(pid, usage)
            conn = children.pop(pid, None)
            if conn is not None:
                rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                try:
                    conn.sendall(f"exit {rc}\n".encode())
                except OSError:
                    pass
                conn.close()
        if os.getppid() != parent:
            os._exit(0)
        if not ready:
            continue
        conn, _ = listener.accept()
        fds = []
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
            while not msg.endswith(b"\n"):
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                msg += chunk
            request = json.loads(msg.decode())
            pid = os.fork()
        except Exception:  # noqa: BLE001 - a bad request or a failed fork ends that request only
            for fd in fds:
                os.close(fd)
            conn.close()
            continue
        if pid == 0:
            listener.close()
            for other in children.values():
                other.close()
            request["fds"], request["conn"] = fds, conn
            return request
        for fd in fds:
            os.close(fd)
        _ARGV[pid] = request.get("argv")
        children[pid] = conn  # the child sends its pid once it is set up; this side its exit status


_ARGV: dict = {}  # pid -> argv, for PREWARMED_CPU_LOG


def _log_usage(pid: int, usage) -> None:
    """``PREWARMED_CPU_LOG=FILE``: append each child's CPU seconds and argv (a measurement aid)."""
    log = os.environ.get("PREWARMED_CPU_LOG")
    argv = _ARGV.pop(pid, None)
    if log:
        try:
            with open(log, "a") as f:
                f.write("%.2f\t%.2f\t%s\n" % (time.time(), usage.ru_utime + usage.ru_stime, json.dumps(argv)))
        except OSError:
            pass  # a measurement aid only: never the zygote's end


def _become_child(request: dict) -> None:
    """Turn this forked process into ``python -m MODULE ARGV`` as a fresh start would see it."""
    fds = request["fds"]
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    if request["new_session"]:
        os.setsid()
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    _die_with_zygote()
    conn = request.pop("conn")  # as Popen returns once the child runs in its own session
    conn.sendall(f"pid {os.getpid()}\n".encode())
    conn.close()
    os.environ.clear()
    os.environ.update(request["env"])
    for key, value in _IMPORT_ENV.items():  # what the preloaded imports set: a fresh import sets it too
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    # stdio as CPython's create_stdio makes it: PYTHONIOENCODING and -u / PYTHONUNBUFFERED over
    # the locale's defaults (the zygote's own streams, made from the same locale)
    encoding, _, errors = (os.environ.get("PYTHONIOENCODING") or "").partition(":")
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED")) or request["unbuffered"]  # or `python -u`

    old_streams = (sys.stdout, sys.stderr)

    def stream(fd, default):
        raw = io.FileIO(fd, "r" if fd == 0 else "w", closefd=False)
        raw.name = ("<stdin>", "<stdout>", "<stderr>")[fd]
        buf = raw if unbuffered and fd else (io.BufferedReader(raw) if fd == 0 else io.BufferedWriter(raw))
        if fd == 2:
            chosen = "backslashreplace"
        elif "PYTHONIOENCODING" in os.environ:
            chosen = errors or "strict"
        else:
            chosen = default.errors
        return io.TextIOWrapper(buf, encoding=codecs.lookup(encoding).name if encoding else default.encoding,
                                errors=chosen, newline="\n",
                                line_buffering=not unbuffered and (fd == 2 or os.isatty(fd)), write_through=unbuffered)

    sys.stdin = sys.__stdin__ = stream(0, sys.__stdin__)
    sys.stdout = sys.__stdout__ = stream(1, sys.__stdout__)
    sys.stderr = sys.__stderr__ = stream(2, sys.__stderr__)
    import logging

    for logger in [logging.root] + list(logging.Logger.manager.loggerDict.values()):  # handlers made at import
        for h in getattr(logger, "handlers", ()):
            if isinstance(h, logging.StreamHandler) and h.stream in old_streams:
                h.setStream(sys.stdout if h.stream is old_streams[0] else sys.stderr)
    if sys.path and sys.path[0] == "":
        sys.path[0] = os.getcwd()  # as `python -m` has it
    import numpy as np
    import torch

    np.random.seed()
    torch.seed()  # a fresh process draws its own initial seed
    sys.argv = ["-m"] + list(request["argv"])  # runpy puts the module's path in argv[0]
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads != _START_ENV.get("OMP_NUM_THREADS") and threads and threads.isdigit():
        _limit_threads(int(threads))  # a torchrun worker: torchrun sets 1 when nothing is set
    if any(os.environ.get(k) != _START_ENV.get(k) for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")):
        rz = sys.modules.get("lightning_fabric.utilities.rank_zero")
        if rz is not None:  # what its import reads from the rank variables (a torchrun worker's rank)
            rz.rank_zero_only.rank = rz._get_rank() or 0
    if request["module"] == "torch.distributed.run":
        _fork_torchrun_workers(request["zygote"])


def _limit_threads(n: int) -> None:
    """What ``OMP_NUM_THREADS=n`` does at a fresh start (OpenMP, BLAS and torch's intra-op pool),
    for a child whose zygote was started without it. Known limit: ``omp_set_num_threads`` is per
    thread in libgomp, so a Python thread started later sees the zygote's default in libraries
    other than torch (which sets it again in each thread); the DDP tests that call torchrun
    themselves give the zygote ``OMP_NUM_THREADS=1`` from the start and do not depend on this."""
    import torch

    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass


def _torchrun_free(env: dict) -> dict:
    return {k: v for k, v in env.items() if k not in TORCHRUN_VARS and not k.startswith(TORCHRUN_PREFIXES)}


def _fork_torchrun_workers(path: str) -> None:
    """In a child that runs torchrun: its workers (``python -u -m brainspineai ...``, started by
    ``SubprocessHandler`` through ``subprocess.Popen``) are forked from the same zygote when their
    environment differs from this child's only in what torchrun sets per worker; anything else
    starts as torchrun starts it."""
    from torch.distributed.elastic.multiprocessing.subprocess_handler import subprocess_handler as handler

    start = _fingerprint(_torchrun_free(dict(os.environ)))
    real = handler.Popen

    from types import SimpleNamespace

    zygote = SimpleNamespace(path=path)  # what ForkedPopen needs of a zygote

    def forking_popen(args, env=None, **kwargs):
        if _command(args) is not None and env is not None and _fingerprint(_torchrun_free(env)) == start:
            try:
                return ForkedPopen(zygote, args, env=env, **kwargs)
            except OSError:
                pass  # the zygote could not start it: as torchrun starts it
        return real(args, env=env, **kwargs)

    handler.Popen = forking_popen
    real_close = handler.SubprocessHandler.close

    def close(self, death_sig=None):
        try:
            real_close(self, death_sig)
        except ProcessLookupError:  # the zygote reaps a worker at once; a fresh one is still a zombie here
            for f in (self._stdout, self._stderr):
                if f:
                    f.close()

    handler.SubprocessHandler.close = close


def _die_with_zygote() -> None:
    """Linux: this child gets SIGKILL if its zygote dies (the test process then reports -9, and
    no process is left running unseen)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_IMPORT_ENV: dict = {}  # variables the preloaded imports set (None: removed), set again in each child
_START_ENV: dict = {}  # the zygote's environment as it was started


def _zygote_main(path: str, ready_fd: int) -> None:
    import warnings

    filters, hooks, env = list(warnings.filters), (warnings.showwarning, warnings.formatwarning), dict(os.environ)
    _START_ENV.update(env)
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    warnings.filters[:] = filters  # what the packages filter at import is not filtered in the child
    warnings._filters_mutated()
    warnings.showwarning, warnings.formatwarning = hooks
    _IMPORT_ENV.update({k: os.environ.get(k) for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)})
    import gc

    gc.collect()
    gc.freeze()  # children's garbage collections skip (and so do not copy) the preloaded objects
    import threading

    if threading.active_count() > 1:  # forking would copy a lock some thread may hold
        os.write(ready_fd, b"threads\n")
        return
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    os.write(ready_fd, b"ready\n")
    os.close(ready_fd)
    request = _serve(listener)
    _become_child(request)
    _run_and_exit(request["module"])


def _run_and_exit(module: str) -> None:
    """Run the command, then end as CPython ends a process (non-daemon threads joined, ``atexit``
    handlers, std streams flushed, the exit status of ``SystemExit`` / an uncaught exception /
    ``KeyboardInterrupt``) but without tearing down the 5000 preloaded modules one by one, which
    alone costs about 2 CPU-seconds and that nothing of ours observes."""
    import atexit
    import runpy
    import threading

    code = 0
    try:
        runpy._run_module_as_main(module)  # what `python -m MODULE` runs
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException as e:  # noqa: BLE001 - as the interpreter reports an uncaught exception
        sys.excepthook(type(e), e, e.__traceback__)
        code = -signal.SIGINT if isinstance(e, KeyboardInterrupt) else 1
    threading._shutdown()
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        code = code or 120  # as CPython when flushing stdout fails at exit
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if code == -signal.SIGINT:  # as CPython exits on an uncaught KeyboardInterrupt
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 128 + signal.SIGINT
    os._exit(code & 0xFF)


# --------------------------------------------------------------------------- the test process side


class _Zygote:
    START_TIMEOUT = 300  # seconds for the preload; past it the suite uses plain processes

    def __init__(self, env: dict):
        self.folder = tempfile.mkdtemp(prefix="bsai-zygote-")
        self.path = os.path.join(self.folder, "s")
        r, w = os.pipe()
        code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
                f"import prewarmed; del sys.path[0]; prewarmed._zygote_main({self.path!r}, {w})")
        self.process = subprocess.Popen([sys.executable, "-c", code], env=env, pass_fds=(w,),
                                        stdin=subprocess.DEVNULL)
        os.close(w)
        with os.fdopen(r) as f:
            ready, _, _ = select.select([f], [], [], self.START_TIMEOUT)
            self.ok = bool(ready) and f.readline().strip() == "ready"
        if not self.ok:
            self.stop()

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        try:
            os.unlink(self.path)
            os.rmdir(self.folder)
        except OSError:
            pass


_ZYGOTES: dict = {}
_LOCK = threading.Lock()


def _zygote_for(env: dict):
    key = _fingerprint(env)
    with _LOCK:
        if key in _ZYGOTES and _ZYGOTES[key].ok and _ZYGOTES[key].process.poll() is not None:
            _ZYGOTES.pop(key).stop()  # it died (killed with a process group, say): start another
        if key not in _ZYGOTES:
            if len(_ZYGOTES) >= MAX_ZYGOTES:
                return None
            _ZYGOTES[key] = _Zygote({k: v for k, v in env.items() if not _free_to_differ(k)})
        return _ZYGOTES[key] if _ZYGOTES[key].ok else None  # it could not start: plain processes


def stop_for(env: dict) -> None:
    """Stop the zygote that serves ``env`` (if any)."""
    with _LOCK:
        z = _ZYGOTES.pop(_fingerprint(env), None)
    if z is not None:
        z.stop()


def stop_all() -> None:
    with _LOCK:
        for z in _ZYGOTES.values():
            z.stop()
        _ZYGOTES.clear()


def enabled() -> bool:
    return os.environ.get("BRAINSPINEAI_TEST_CLI") != "process"


def _command(args):
    """``(module, argv after it, unbuffered)`` for ``[sys.executable, ("-u",) "-m", MODULE, ...]``
    with MODULE in :data:`MODULES`, else ``None``."""
    args = [str(a) for a in args] if not isinstance(args, (str, bytes)) else []
    unbuffered = args[1:2] == ["-u"]
    rest = args[2:] if unbuffered else args[1:]
    if args[:1] == [sys.executable] and len(rest) >= 2 and rest[0] == "-m" and rest[1] in MODULES:
        return rest[1], rest[2:], unbuffered
    return None


def is_library_command(args) -> bool:
    return _command(args) is not None


def _umask() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


class ForkedPopen:
    """The part of :class:`subprocess.Popen` that the modules and tests use (``pid``, ``stdin``,
    ``stdout``, ``stderr``, ``returncode``, ``poll``, ``wait``, ``communicate``, ``send_signal``,
    ``terminate``, ``kill``), for a child forked by a zygote. A thread per child waits for its
    exit status, so ``poll`` / ``wait`` never block each other."""

    def __init__(self, zygote, args, stdin=None, stdout=None, stderr=None, text=False, encoding=None,
                 errors=None, env=None, cwd=None, start_new_session=False, universal_newlines=None, **kwargs):
        import locale

        unsupported = set(kwargs) - {"creationflags", "startupinfo"}  # Windows-only, as on POSIX
        if unsupported:
            raise TypeError(f"ForkedPopen does not support {sorted(unsupported)}")
        cwd = os.path.abspath(cwd or os.getcwd())
        if not os.path.isdir(cwd):
            raise FileNotFoundError(2, "No such file or directory", cwd)
        self.args = list(args)
        self.returncode = None
        self._busy = []  # streams a timed-out reader thread is still reading (see _communicate)
        self._ended = threading.Event()
        text = bool(text or universal_newlines or encoding or errors)
        mine, theirs, close_here = [], [], []
        try:
            for i, spec in enumerate((stdin, stdout, stderr)):
                if spec == subprocess.PIPE:
                    r, w = os.pipe()
                    mine.append(w if i == 0 else r)
                    theirs.append(r if i == 0 else w)
                    close_here.append(theirs[-1])
                elif spec == subprocess.DEVNULL:
                    fd = os.open(os.devnull, os.O_RDWR)
                    mine.append(None)
                    theirs.append(fd)
                    close_here.append(fd)
                elif spec == subprocess.STDOUT and i == 2:
                    mine.append(None)
                    theirs.append(theirs[1])
                elif spec is None:
                    mine.append(None)
                    theirs.append(i)
                else:
                    mine.append(None)
                    theirs.append(spec if isinstance(spec, int) else spec.fileno())
            self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            close_here.append(self._conn)
            self._conn.connect(zygote.path)
            module, argv, unbuffered = _command(self.args)
            request = {"module": module, "argv": argv, "unbuffered": unbuffered, "zygote": zygote.path,
                       "env": dict(env if env is not None else os.environ), "cwd": cwd,
                       "new_session": bool(start_new_session), "umask": _umask()}
            socket.send_fds(self._conn, [json.dumps(request).encode() + b"\n"], theirs)
            self._reader = self._conn.makefile("rb")  # one buffered reader: "pid" and "exit" may arrive together
            line = self._reader.readline().decode()
            if not line.startswith("pid "):
                raise OSError(f"the prewarmed process could not start {self.args}: {line.strip()}")
        except BaseException:
            for fd in mine:
                if fd is not None:
                    os.close(fd)
            for item in close_here:
                item.close() if isinstance(item, socket.socket) else os.close(item)
            raise
        for fd in close_here[:-1]:
            os.close(fd)
        self.pid = int(line.split()[1])
        threading.Thread(target=self._wait_for_exit, daemon=True).start()

        def wrap(fd, mode):  # as subprocess.Popen wraps its pipes (bufsize -1)
            if fd is None:
                return None
            if not text:
                return open(fd, mode + "b")
            enc, err = encoding or locale.getpreferredencoding(False), errors or "strict"
            if mode == "r":
                return open(fd, "r", encoding=enc, errors=err)
            return io.TextIOWrapper(open(fd, "wb"), encoding=enc, errors=err, write_through=True)

        self.stdin, self.stdout, self.stderr = wrap(mine[0], "w"), wrap(mine[1], "r"), wrap(mine[2], "r")

    def _wait_for_exit(self):
        reader = self._reader
        line = reader.readline().decode()
        if line.startswith("exit "):
            self.returncode = int(line.split()[1])
        else:  # the zygote died: its children were killed with it (PR_SET_PDEATHSIG)
            while _alive(self.pid):
                time.sleep(0.05)
            self.returncode = -signal.SIGKILL
        reader.close()
        self._conn.close()
        self._ended.set()

    def poll(self):
        return self.returncode if self._ended.is_set() else None

    def wait(self, timeout=None):
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def communicate(self, input=None, timeout=None):
        return _communicate(self, input, timeout)

    def send_signal(self, sig):
        if not self._ended.is_set():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for s in (self.stdin, self.stdout, self.stderr):
            if s is not None and s not in self._busy:  # a reader thread still blocked in it holds its lock
                try:
                    s.close()
                except OSError:
                    pass
        self.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def popen(args, **kwargs):
    """``subprocess.Popen(args, **kwargs)``, forked from a prewarmed process when ``args`` is
    ``[sys.executable, ("-u",) "-m", MODULE, ...]`` (MODULE in :data:`MODULES`) and the suite is
    not in process mode."""
    if enabled() and is_library_command(args) and os.name == "posix":
        zygote = _zygote_for(dict(kwargs.get("env") if kwargs.get("env") is not None else os.environ))
        if zygote is not None:
            return ForkedPopen(zygote, args, **kwargs)
    return subprocess.Popen(args, **kwargs)


class SubprocessShim:
    """Stands in for the ``subprocess`` module inside a module under test: ``Popen`` goes
    through :func:`popen`, everything else is the real module's."""

    Popen = staticmethod(popen)

    def __getattr__(self, name):
        return getattr(subprocess, name)


def run(args, input=None, capture_output=False, timeout=None, check=False, **kwargs):
    """``subprocess.run`` through :func:`popen` (text / capture as there)."""
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    proc = popen(args, **kwargs)
    with proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    r = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if check:
        r.check_returncode()
    return r


def _communicate(proc, input, timeout):
    """Read stdout and stderr at once (threads), so that neither pipe fills and blocks the child;
    a child that ends without reading its input is no error, as with ``Popen.communicate``."""
    deadline = None if timeout is None else time.monotonic() + timeout
    results = {}

    def reader(name, stream):
        results[name] = stream.read()

    pairs = [(s, threading.Thread(target=reader, args=(n, s), daemon=True))
             for n, s in (("out", proc.stdout), ("err", proc.stderr)) if s is not None]
    for _, t in pairs:
        t.start()
    try:
        if proc.stdin is not None:
            try:
                if input is not None:
                    proc.stdin.write(input)
                proc.stdin.close()
            except BrokenPipeError:
                pass
        proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        for _, t in pairs:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if t.is_alive():  # something the child started (a torchrun worker, say) still holds the pipe
                raise subprocess.TimeoutExpired(proc.args, timeout)
    except subprocess.TimeoutExpired:
        if isinstance(proc, ForkedPopen):  # closing a stream a blocked reader holds would wait for ever
            proc._busy = [s for s, t in pairs if t.is_alive()]
        raise
    for s in (proc.stdout, proc.stderr):
        if s is not None:
            s.close()
    return results.get("out"), results.get("err")
