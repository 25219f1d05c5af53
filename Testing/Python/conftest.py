"""Shared fixtures. Real data come from ``../shared/data`` beside the project root (or
``$BRAINSPINEAI_TEST_DATA``); tests that need it are skipped with a reason when it is absent.
Nothing here downloads: models come from the package's own zoo or from temporary folders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# OpenMP threads that wait for work sleep instead of spinning first (libgomp's default): on the
# 2-core CI machine spinning only adds CPU time (about 5% of the suite's). Set before torch loads
# here; the suite's child processes inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[2]
LIB_PARENT = ROOT / "BrainSpineAI"
if str(LIB_PARENT) not in sys.path:
    sys.path.insert(0, str(LIB_PARENT))  # brainspineai and BrainSpineAILib without installing

DATA = Path(os.environ.get("BRAINSPINEAI_TEST_DATA", ROOT.parent / "shared" / "data"))
KAGGLE = DATA / "brain-mri-2d" / "kaggle4-train"
FIGSHARE = DATA / "brain-mri-2d" / "figshare3"
BRATS15 = DATA / "volumes" / "brats2015-flair-t1c"
BRATS23 = DATA / "volumes" / "brats2023-4seq-noseg" / "BraTS-GLI-00001-000"
SPINE = DATA / "volumes" / "spine-cervical-t1-t2"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set BRAINSPINEAI_TEST_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return need(DATA)


@pytest.fixture(scope="session", autouse=True)
def prewarmed_children():
    """The Slicer modules' background jobs, warm workers and training runs (and the tests' own
    ``python -m brainspineai`` processes that use :func:`prewarmed.popen`) are forked from a
    process that has imported torch and MONAI already (``prewarmed.py`` says what differs from
    a fresh start); ``BRAINSPINEAI_TEST_CLI=process`` starts them as Slicer does."""
    import prewarmed

    patched, workers = [], None
    if prewarmed.enabled():
        try:
            from BrainSpineAILib import background, worker_client as workers
        except ImportError:
            pass
        else:
            for module in (background, workers):
                patched.append((module, module.subprocess))
                module.subprocess = prewarmed.SubprocessShim()
    yield
    if workers is not None:
        workers.stopAll()  # the warm workers end before the zygotes they were forked from
    for module, original in patched:
        module.subprocess = original
    prewarmed.stop_all()


@pytest.fixture(autouse=True)
def isolated_catalogue(tmp_path_factory, monkeypatch):
    """Every test sees only the shipped models and an empty per-user folder."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("BRAINSPINEAI_HOME", str(home))
    monkeypatch.delenv("BRAINSPINEAI_MODEL_PATH", raising=False)
    return home


KAGGLE_MODEL_ID = "brain-tumor-4class-resnet18w32"  # shipped; trained on kaggle4-train only (split.json there)


@pytest.fixture(scope="session")
def kaggle_model():
    """The shipped ResNet trained on kaggle4-train alone: its split.json names kaggle4 images."""
    from brainspineai.catalogue import load_model

    return load_model(KAGGLE_MODEL_ID, "cpu")


@pytest.fixture(scope="session")
def validation_images(kaggle_model):
    """(path, class name) of the kaggle4 model's held-out validation images, per class."""
    split = json.loads((kaggle_model.folder / "split.json").read_text())
    root = need(KAGGLE)
    out = {}
    for rel in split["validation"]:
        out.setdefault(rel.split("/")[0], []).append(root / rel)
    return out


def run_cli(*args, env=None, timeout=900, process=False) -> subprocess.CompletedProcess:
    """Run the command line ``brainspineai ARGS`` and return a completed process (text mode).

    By default the command runs in this process (:func:`brainspineai.cli.main`), as a fresh
    process would see it: ``env`` set for the call, the process's warning filters without
    pytest's, only the last-resort handler at the logging root and libraries' own handlers
    pointed at the call's output, once-per-process state cleared, and stdout / stderr captured
    at the file descriptors as well (what C++ libraries print). That saves importing torch and
    MONAI again for each of the suite's ~150 commands, about a third of its CPU time. ``process=True`` (or an
    interpreter variable in ``env``, or ``BRAINSPINEAI_TEST_CLI=process`` for the whole suite)
    runs ``python -m brainspineai`` in a child process instead: the tests of the real entry
    point (exit status as the shell sees it, what is imported) do so, and so does ``worker``
    or a call whose ``env`` sets what a process reads only when it starts (``PYTHON*``, thread
    counts, CUDA, torch, Hugging Face). ``timeout`` (seconds): a
    child process is killed after it; a command in this process that runs longer gets SIGINT,
    as by Ctrl-C (the command's own handling: exit status 130, "brainspineai: interrupted").
    Not covered in this process: what happens at exit (atexit, threads that keep a process
    alive); the suite with ``BRAINSPINEAI_TEST_CLI=process`` covers it."""
    args = [str(a) for a in args]
    if (process or os.environ.get("BRAINSPINEAI_TEST_CLI") == "process" or args[:1] == ["worker"]  # reads stdin, caches
            or any(k.startswith(("PYTHON", "OMP_", "MKL_", "CUDA_", "TORCH", "HF_")) for k in env or {})):  # read at start
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join([str(LIB_PARENT)] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else []))
        full_env.update(env or {})
        return subprocess.run([sys.executable, "-m", "brainspineai", *args], capture_output=True, text=True,
                              env=full_env, timeout=timeout)
    return _run_cli_here(args, env or {}, timeout)


def _run_cli_here(args, env, timeout) -> subprocess.CompletedProcess:
    import contextlib
    import ctypes
    import io
    import logging
    import signal
    import tempfile
    import threading
    import traceback
    import warnings

    from brainspineai import catalogue
    from brainspineai.classification import sequence
    from brainspineai.cli import main

    catalogue._warned.clear()  # once-per-process state starts empty, as in a new process
    sequence._default_sequence_model.cache_clear()
    saved_env = dict(os.environ)
    saved_handlers, saved_level = logging.root.handlers[:], logging.root.level
    py_out, py_err = io.StringIO(), io.StringIO()
    outer = {sys.stdout: py_out, sys.__stdout__: py_out, sys.stderr: py_err, sys.__stderr__: py_err}
    running = threading.Event()

    def on_sigint(signum, frame):  # only while the command runs: a late alarm must not hit the restoring
        if running.is_set():
            raise KeyboardInterrupt

    # a hang: SIGINT to the main thread after `timeout` s (it wakes blocking calls), as Ctrl-C would
    alarm = threading.Timer(timeout, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    libc_flush = ctypes.CDLL(None).fflush
    with tempfile.TemporaryFile() as fd_out, tempfile.TemporaryFile() as fd_err:
        sys.stdout.flush(), sys.stderr.flush(), sys.__stdout__.flush(), sys.__stderr__.flush(), libc_flush(None)
        saved_fds = os.dup(1), os.dup(2)
        saved_sigint = signal.signal(signal.SIGINT, on_sigint)
        rebound = _rebind_stream_handlers(outer)  # libraries' own handlers bound to the console at import
        try:
            os.environ.update({k: str(v) for k, v in env.items()})
            os.dup2(fd_out.fileno(), 1)
            os.dup2(fd_err.fileno(), 2)
            logging.root.handlers[:] = []  # as in a fresh process: warnings reach stderr (logging.lastResort)
            logging.root.setLevel(logging.WARNING)
            with warnings.catch_warnings(), contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_err):
                # the process's filters (Python's defaults, PYTHONWARNINGS, the libraries'), not pytest's own
                warnings.filters[:] = [f for f in warnings.filters if not _pytest_filter(f)]
                warnings.showwarning = _show_warning
                running.set()
                alarm.start()
                try:
                    rc = main(args)
                except SystemExit as exc:
                    rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                except BaseException:  # noqa: BLE001 - what an uncaught exception does to a process
                    traceback.print_exc()
                    rc = 1
                finally:
                    running.clear()
                    alarm.cancel()
                    sys.__stdout__.flush(), sys.__stderr__.flush(), libc_flush(None)
        finally:
            running.clear()
            alarm.cancel()
            # handlers made during the call write to the console afterwards, as if made outside it
            _rebind_stream_handlers({py_out: sys.stdout, py_err: sys.stderr})
            for handler, stream in rebound:
                handler.setStream(stream)
            signal.signal(signal.SIGINT, saved_sigint)
            logging.root.handlers[:] = saved_handlers
            logging.root.setLevel(saved_level)
            os.environ.clear()
            os.environ.update(saved_env)
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            os.close(saved_fds[0]), os.close(saved_fds[1])
        fd_out.seek(0), fd_err.seek(0)
        c_out = fd_out.read().decode("utf-8", "replace")
        c_err = fd_err.read().decode("utf-8", "replace")
    return subprocess.CompletedProcess(["brainspineai", *args], rc, py_out.getvalue() + c_out, c_err + py_err.getvalue())


def _rebind_stream_handlers(streams: dict) -> list:
    """Point every logging StreamHandler whose stream is a key of ``streams`` at its value;
    returns ``[(handler, old stream)]``."""
    import logging

    loggers = [logging.root] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    out = []
    for lg in loggers:
        for h in lg.handlers:
            if type(h) is logging.StreamHandler and h.stream in streams:
                out.append((h, h.setStream(streams[h.stream])))
    return out


def _pytest_filter(f) -> bool:
    """A warning filter pytest adds around each test (``always`` for deprecations, its own classes)."""
    action, message, category, module, _ = f
    if action == "always" and category in (DeprecationWarning, PendingDeprecationWarning) and message is None and module is None:
        return True
    return issubclass(category, pytest.PytestWarning)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    import warnings

    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def at_2mm(src, dst, label: bool = False):
    """``src`` resampled to 2 mm isotropic (the segmenters' own spacing) and written to ``dst``:
    linear with the corner voxel as background (these BraTS volumes are z-scored, so their
    background is not 0), or nearest neighbour with background 0 for a ``label`` map."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(src))
    size = [int(round(n * sp / 2.0)) for n, sp in zip(img.GetSize(), img.GetSpacing())]
    bg = 0.0 if label else float(sitk.GetArrayViewFromImage(img)[0, 0, 0])
    out = sitk.Resample(img, size, sitk.Transform(), sitk.sitkNearestNeighbor if label else sitk.sitkLinear,
                        img.GetOrigin(), (2.0, 2.0, 2.0), img.GetDirection(), bg, img.GetPixelID())
    sitk.WriteImage(out, str(dst))
    return dst


TINY = dict(image_size=64, batch_size=16, limit_per_class=16, device="cpu", backbone="resnet10-w32")


@pytest.fixture(scope="session")
def tiny_affcl(tmp_path_factory):
    """A two-branch AFF-CL model trained for 6 short epochs on 64 real slices, with its events."""
    from brainspineai.classification.affcl import AFFCLConfig, train_affcl

    out = tmp_path_factory.mktemp("affcl") / "tiny-affcl"
    events = []
    cfg = AFFCLConfig(epochs=6, queue_size=32, lr=3e-3, **TINY)
    folder = train_affcl(need(KAGGLE), out, cfg, progress=events.append)
    return folder, events


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    from brainspineai.classification.simclr import SimCLRConfig, train_simclr

    out = tmp_path_factory.mktemp("simclr") / "tiny-simclr"
    events = []
    cfg = SimCLRConfig(backbone="resnet10-w32", image_size=64, batch_size=16, limit_per_class=12, epochs=8, lr=3e-3,
                       device="cpu")
    return train_simclr(need(KAGGLE), out, cfg, progress=events.append), events


def load_volume(scene, path, name, labelmap: bool = False):
    """Load a volume file into ``scene`` the way Slicer does (volumes logic of slicer-core)."""
    import slicer

    logic = slicer.vtkSlicerVolumesLogic()
    logic.SetMRMLScene(scene)
    node = logic.AddArchetypeVolume(str(path), name, 1 if labelmap else 0)
    assert node is not None, f"Slicer could not load {path}"
    return node
