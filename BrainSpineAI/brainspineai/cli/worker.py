"""``brainspineai worker``: a warm process that serves ``classify`` / ``segment`` jobs.

Torch, MONAI and the model are loaded once; every later job pays only its own reading,
inference and writing. 3D Slicer keeps one (:mod:`BrainSpineAILib.worker_client`); scripts
may too. The protocol is JSON lines over stdin / stdout, one object a line:

Requests (stdin)
    ``{"op": "run", "id": ID, "argv": ["classify" | "segment", ...]}`` the command line of the
    ``brainspineai`` command (``--progress jsonl`` is what a client wants); ``{"op": "classify"
    | "segment", "id": ID, "argv": [...]}`` the same without the command name; ``{"op":
    "cancel", "id": ID}`` drops a queued job or stops the running one at its next progress
    event; ``{"op": "ping"}``; ``{"op": "quit"}`` (or the end of stdin) ends the worker.

Replies (stdout)
    ``{"event": "ready", "pid", "version"}`` once, at start; every JSON line the command prints
    (``progress``, ``done``) with ``"job": ID`` added; its other output as ``{"job", "event":
    "log", "stream", "line"}``; and at the end of every job ``{"job": ID, "event": "exit", "rc":
    exit status as the command's, "error": its last stderr line, "seconds": wall time, "models_loaded": models this
    process has loaded so far}``. A
    malformed request gets ``{"event": "error", "message"}``. ``{"event": "pong"}`` answers a ping.

Jobs run one at a time, in order; the exit status and error lines are the command's own
(0, 2 for bad input, 130 when cancelled). Models are cached per (loader, reference, device,
file stamps of a model folder), at most :data:`CACHE_SIZE`. The last ``--preprocess`` result
is kept too (:func:`cached_preprocess`): a second job on the same volumes (another model, TTA,
a report) skips registration and brain extraction; the report then says ``"reused": true``.
"""
from __future__ import annotations

import io
import json
import os
import queue
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

WORKER_COMMANDS = ("classify", "segment")
CACHE_SIZE = 3
_CACHE = None  # OrderedDict in a worker process; None elsewhere (no caching)
_LOADS = [0]  # models loaded by this process (a worker reports it with every job)
_PREP = {}  # the last preprocessing in a worker: {key: (images, report)}


def _stamp(ref) -> tuple:
    """Names, sizes and modification times of a model folder's files (a changed folder is reloaded)."""
    try:
        folder = Path(ref) if ref else None
        if folder is None or not folder.is_dir():
            return ()
        return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir()) if f.is_file())
    except OSError:
        return ()


def cached_load(ref, guarded, loader, *args):
    """``guarded(ref, loader, *args)`` (:func:`brainspineai.cli.validate.guarded_load`), kept
    and reused inside a worker; a plain call elsewhere."""
    if _CACHE is None:
        return guarded(ref, loader, *args)
    parts = []
    for a in args:
        if hasattr(a, "device"):  # argparse namespace
            parts += [str(getattr(a, "device", "")), bool(getattr(a, "trust_pickle", False))]
        else:
            parts.append(str(a))
    key = (getattr(loader, "__name__", str(loader)), str(ref or ""), tuple(parts), _stamp(ref))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    model = guarded(ref, loader, *args)
    _LOADS[0] += 1
    _CACHE[key] = model
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)
    return model


def image_digest(image) -> str:
    """BLAKE2 digest of a ``SimpleITK.Image``'s voxels, pixel type and geometry."""
    import hashlib

    import numpy as np
    import SimpleITK as sitk

    h = hashlib.blake2b(digest_size=16)
    h.update(repr((image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(),
                   image.GetPixelIDTypeAsString())).encode())
    h.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)))  # the buffer itself, not a copy
    return h.hexdigest()


def cached_preprocess(images: dict, settings: tuple, compute):
    """``compute()`` -> ``(images, report)``; inside a worker the last result is kept under the
    digests of ``images`` and ``settings`` (mode, reference, brain range, device) and returned
    again (images copied, report marked ``"reused": true``) for the same input."""
    if _CACHE is None:
        return compute()
    import SimpleITK as sitk

    key = (tuple(sorted((name, image_digest(img)) for name, img in images.items())), tuple(settings))
    if key not in _PREP:
        result = compute()
        _PREP.clear()
        _PREP[key] = result
        return result
    done, report = _PREP[key]
    return {k: sitk.Image(v) for k, v in done.items()}, dict(report, reused=True)


class Cancelled(KeyboardInterrupt):
    """Raised in a job at its next output line once it was cancelled (exit status 130)."""


class _JobStream(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of a running job: each line goes to the client."""

    encoding = "utf-8"

    def __init__(self, worker, job_id, stream: str, cancel: threading.Event):
        self.worker, self.job_id, self.stream, self.cancel = worker, job_id, stream, cancel
        self.buf = ""
        self.last = ""

    def writable(self):
        return True

    def isatty(self):
        return False

    def write(self, s):
        if self.cancel.is_set() and self.stream == "stdout":
            raise Cancelled("cancelled")
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self._line(line)
        return len(s)

    def _line(self, line):
        text = line.strip("\r")
        if self.stream == "stdout":
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                self.worker.send({**obj, "job": self.job_id})
                return
        elif text.strip():
            self.last = text.strip()
        if text.strip():
            self.worker.send({"job": self.job_id, "event": "log", "stream": self.stream, "line": text})

    def flush(self):
        pass


class Worker:
    """The serving loop: stdin is read by a thread (so ``cancel`` reaches a running job),
    jobs run in the calling thread, one at a time."""

    def __init__(self, entry, stdin=None, stdout=None):
        self.entry = entry  # brainspineai.cli.main.main
        self.stdin = stdin if stdin is not None else sys.stdin
        self.out = stdout if stdout is not None else sys.stdout
        self.lock = threading.Lock()
        self.jobs = queue.Queue()
        self.cancelled = set()
        self.current = None  # (id, threading.Event)

    def send(self, obj) -> None:
        with self.lock:
            self.out.write(json.dumps(obj) + "\n")
            self.out.flush()

    def _read(self):
        for line in self.stdin:
            if not line.strip():
                continue
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                self.send({"event": "error", "message": f"malformed request: {exc}"})
                continue
            op = req.get("op")
            if op == "cancel":
                cur = self.current
                if cur is not None and cur[0] == req.get("id"):
                    cur[1].set()
                else:
                    self.cancelled.add(req.get("id"))
            elif op == "ping":
                self.send({"event": "pong"})
            elif op == "quit":
                break
            elif op == "run" or op in WORKER_COMMANDS:
                argv = req.get("argv")
                if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                    self.send({"event": "error", "message": "argv must be a list of strings"})
                    continue
                self.jobs.put((req.get("id"), argv if op == "run" else [op] + argv))
            else:
                self.send({"event": "error", "message": f"unknown op {op!r}"})
        self.jobs.put(None)

    def run_job(self, job_id, argv) -> int:
        t0 = time.perf_counter()
        if job_id in self.cancelled:
            self.cancelled.discard(job_id)
            self.send({"job": job_id, "event": "exit", "rc": 130, "error": "cancelled", "seconds": 0.0})
            return 130
        if not argv or argv[0] not in WORKER_COMMANDS:
            what = argv[0] if argv else "nothing"
            self.send({"job": job_id, "event": "exit", "rc": 2, "seconds": 0.0,
                       "error": f"brainspineai: error: the worker runs {' and '.join(WORKER_COMMANDS)}, not {what}"})
            return 2
        cancel = threading.Event()
        self.current = (job_id, cancel)
        out, err = _JobStream(self, job_id, "stdout", cancel), _JobStream(self, job_id, "stderr", cancel)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            try:
                rc = self.entry(list(argv))
            except Cancelled:
                rc = 130
            for s in (out, err):
                if s.buf:
                    s._line(s.buf)
                    s.buf = ""
        finally:
            sys.stdout, sys.stderr = saved
            self.current = None
        if cancel.is_set():
            rc, err.last = 130, "brainspineai: cancelled"
        self.send({"job": job_id, "event": "exit", "rc": rc, "error": err.last if rc else "",
                   "seconds": round(time.perf_counter() - t0, 3), "models_loaded": _LOADS[0]})
        return rc

    def serve(self) -> int:
        from .. import __version__

        threading.Thread(target=self._read, daemon=True).start()
        self.send({"event": "ready", "pid": os.getpid(), "version": __version__})
        while True:
            item = self.jobs.get()
            if item is None:
                return 0
            self.run_job(*item)


def _preload(command: str) -> None:
    """Import what ``command`` needs before the first request (the client does not wait)."""
    if command == "classify":
        import brainspineai.classification.inference  # noqa: F401
        import brainspineai.classification.networks  # noqa: F401
    elif command == "segment":
        import brainspineai.segmentation.inference  # noqa: F401
        import brainspineai.segmentation.network  # noqa: F401


def cmd_worker(args, entry) -> int:
    """Serve jobs until stdin ends; ``entry`` runs one command line (``brainspineai.cli.main.main``)."""
    global _CACHE
    _CACHE = OrderedDict()
    # the protocol gets its own copy of stdout; fd 1 now goes to stderr, so that whatever a
    # library prints (C code included) cannot break a JSON line
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    worker = Worker(entry, stdout=protocol)
    if args.preload:
        threading.Thread(target=_preload, args=(args.preload,), daemon=True).start()
    return worker.serve()


def add_parser(sub, entry) -> None:
    w = sub.add_parser("worker", help="serve classify / segment jobs as JSON lines on stdin / stdout "
                                      "(a warm process for 3D Slicer and scripts)")
    w.add_argument("--preload", choices=list(WORKER_COMMANDS),
                   help="import what this command needs at start, before the first request")
    w.set_defaults(func=lambda args: cmd_worker(args, entry))
