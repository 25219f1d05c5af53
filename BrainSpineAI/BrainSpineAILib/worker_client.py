"""The warm ``brainspineai worker`` of the Slicer modules (see :mod:`brainspineai.cli.worker`).

:func:`startJob` is what the logic classes call instead of ``BackgroundJob(cliCommand(...))``:
a ``classify`` or ``segment`` command goes to a worker process that stays alive between jobs
(torch, MONAI and the model stay loaded: a second classification or segmentation costs its
inference plus file transfer), anything else, or everything when the environment variable
``BRAINSPINEAI_WARM_WORKER=0`` is set, to a fresh :class:`~BrainSpineAILib.background.BackgroundJob`.

One worker per command (a classification never queues behind a segmentation), started on
first use with :func:`~BrainSpineAILib.background.pythonExecutable` in its own process group,
restarted when it died. Nothing here waits on the worker: requests are written to its
stdin, replies read by a thread; :class:`WorkerJob` has the interface of ``BackgroundJob``
(``poll``, ``checkFinished``, ``cancel``, ``fraction``, ``progressText``, ``result``,
``context``, ``workdir``...). ``cancel()`` of a running job kills the worker (the model
cannot be interrupted mid-inference) and starts a fresh one; of a queued job, drops it.
"""
from __future__ import annotations

import atexit
import itertools
import json
import os
import signal
import subprocess
import threading
import time

from .background import BackgroundJob, libraryEnvironment, processOptions, pythonExecutable

WARM_COMMANDS = ("classify", "segment")


class _JobProcess:
    """``job.process`` of a :class:`WorkerJob`: the worker's pid, and the job's exit status as
    if the job had been a process of its own (``poll()`` is ``None`` while it runs)."""

    def __init__(self, job, proc):
        self.job, self.worker = job, proc
        self.pid = proc.pid if proc is not None else None

    @property
    def returncode(self):
        return self.job.returncode

    def poll(self):
        return self.job.returncode if self.job.poll() else None

    def wait(self, timeout=None):
        if not self.job.wait(timeout):
            raise subprocess.TimeoutExpired(self.job.command, timeout)
        return self.job.returncode


class WorkerJob(BackgroundJob):
    """One job of a :class:`WarmWorker`, with :class:`BackgroundJob`'s interface."""

    def __init__(self, worker, jobId: str, argv, workdir=None, context=None):
        import queue
        from pathlib import Path

        self.worker, self.jobId = worker, jobId
        self.command = worker._commandLine()[:3] + [str(a) for a in argv]  # [python, -m, brainspineai, ...] as it runs
        self.workdir = Path(workdir) if workdir is not None else None
        self.context = dict(context or {})
        self.progressText, self.fraction, self.etaSeconds = "waiting for the worker", 0.0, None
        self.result, self.errorText, self.cancelled = None, "", False
        self.events, self.logLines, self._newEvents = [], [], []
        self._lines = queue.Queue()
        self.returncode = None
        self.seconds = None  # the job's wall time in the worker
        self.modelsLoaded = None  # models the worker had loaded when the job ended
        self._ended = threading.Event()
        self.started = False  # the worker began it (a queued job can be dropped without a kill)
        self._worker_process = worker.process
        self._deadSince = None

    @property
    def process(self):
        """The job as a process (see :class:`_JobProcess`); its ``pid`` is the worker's."""
        return _JobProcess(self, self._worker_process)

    # fed by the worker's reader thread
    def _feed(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "exit":
            if event.get("error"):
                self._lines.put(("err", str(event["error"])))
            self.seconds = event.get("seconds")
            self.modelsLoaded = event.get("models_loaded")
            self.returncode = int(event.get("rc", 1))
            self._ended.set()
        elif kind == "log":
            self._lines.put(("err" if event.get("stream") == "stderr" else "out", str(event.get("line", ""))))
        else:
            self.started = True
            self._lines.put(("out", json.dumps({k: v for k, v in event.items() if k != "job"})))

    def _end(self, rc: int, error: str) -> None:
        if self.returncode is None:
            if error:
                self._lines.put(("err", error))
            self.returncode = rc
            self._ended.set()

    def poll(self) -> bool:
        proc = self._worker_process
        if self.returncode is None and proc is not None and proc.poll() is not None:
            # the worker is gone; its reader thread ends this job, unless the job was sent after
            # the reader finished: then this does, once the reader had time to deliver its lines
            if self._deadSince is None:
                self._deadSince = time.monotonic()
            elif time.monotonic() - self._deadSince > 5:
                self._end(proc.returncode or 1, f"the background worker stopped unexpectedly (exit code {proc.returncode})")
        self._drain()
        return self.returncode is not None

    def wait(self, timeout=None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.poll():
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._ended.wait(0.5 if left is None else min(0.5, left))
        return True

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and not self.cancelled

    def checkFinished(self, what: str) -> dict:
        if not self.poll():
            raise RuntimeError(f"{what} is still running")
        if self.cancelled:
            raise RuntimeError(f"{what} was cancelled")
        if self.returncode != 0 or self.result is None:
            raise RuntimeError(self.errorText or f"{what} failed in the background worker (exit code {self.returncode})")
        return self.result

    def cancel(self) -> None:
        """Stop the job (kill and restart the worker if it is running); remove its files."""
        self.cancelled = True
        if self.returncode is None:
            self.worker.cancel(self)
        self.poll()
        self.cleanup()


class WarmWorker:
    """One ``brainspineai worker`` process, started on demand and restarted when it died.

    :param preload: command whose modules the worker imports at start (``"classify"`` / ``"segment"``).
    :param command: the process's argument list (default ``[python, -m, brainspineai, worker]``).
    """

    def __init__(self, preload: str | None = None, command=None, env=None):
        self.preload = preload
        self.command = command
        self.env = env
        self.process = None
        self.jobs = {}  # job id -> WorkerJob not yet ended
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.starts = 0
        self.stderrTail = []

    def _commandLine(self):
        if self.command is not None:
            return list(self.command)
        return [pythonExecutable(), "-m", "brainspineai", "worker"] + (["--preload", self.preload] if self.preload else [])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process if it is not running (returns at once; the worker loads in the background)."""
        with self.lock:
            if self.alive():
                return
            proc = subprocess.Popen(self._commandLine(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                    env=self.env if self.env is not None else libraryEnvironment(), **processOptions())
            self.process = proc
            self.starts += 1
        threading.Thread(target=self._readReplies, args=(proc,), daemon=True).start()
        threading.Thread(target=self._readStderr, args=(proc,), daemon=True).start()

    def _readStderr(self, proc) -> None:
        for line in proc.stderr:
            if line.strip():
                self.stderrTail = (self.stderrTail + [line.rstrip("\n")])[-20:]

    def _readReplies(self, proc) -> None:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if not isinstance(event, dict) or "job" not in event:
                continue
            job = self.jobs.get(event["job"])
            if job is not None:
                job._feed(event)
                if event.get("event") == "exit":
                    self.jobs.pop(event["job"], None)
        rc = proc.wait()
        with self.lock:
            if proc is not self.process:  # killed on purpose and already replaced
                return
            orphans = [j for j in self.jobs.values()]
            self.jobs.clear()
        last = self.stderrTail[-1] if self.stderrTail else ""
        for job in orphans:  # the worker died under these jobs
            job._end(rc if rc else 1, f"the background worker stopped unexpectedly (exit code {rc}) {last}".strip())

    def submit(self, argv, workdir=None, context=None) -> WorkerJob:
        """Queue ``brainspineai <argv>`` in the worker (started or restarted as needed)."""
        self.start()
        job = WorkerJob(self, str(next(self.ids)), argv, workdir, context)
        with self.lock:
            self.jobs[job.jobId] = job
            proc = self.process
        try:
            proc.stdin.write(json.dumps({"op": "run", "id": job.jobId, "argv": [str(a) for a in argv]}) + "\n")
            proc.stdin.flush()
        except (OSError, ValueError):  # it died just now: the reader ends the job with its exit code
            pass
        return job

    def cancel(self, job: WorkerJob) -> None:
        """Drop a queued job; a running one (or one the worker may have begun) kills the worker,
        which is restarted at once."""
        job._drain()
        running = job.started or self._first(job)
        if not running:
            try:
                self.process.stdin.write(json.dumps({"op": "cancel", "id": job.jobId}) + "\n")
                self.process.stdin.flush()
            except (OSError, ValueError, AttributeError):
                pass
            with self.lock:
                self.jobs.pop(job.jobId, None)
            job._end(130, "cancelled")
            return
        job._end(130, "cancelled")
        self.kill()
        self.start()

    def _first(self, job) -> bool:
        with self.lock:
            return bool(self.jobs) and min(self.jobs, key=int) == job.jobId

    def kill(self) -> None:
        """Kill the worker and everything it started; its jobs end as failed."""
        with self.lock:
            proc, self.process = self.process, None
            orphans = list(self.jobs.values())
            self.jobs.clear()
        for job in orphans:
            job._end(-9, "the background worker was stopped")
        if proc is None or proc.poll() is not None:
            return
        try:
            if os.name == "posix":
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                subprocess.run(["taskkill", "/F", "/T", "/PID", str(proc.pid)], capture_output=True,
                               startupinfo=processOptions()["startupinfo"])
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        """Ask the worker to end (stdin closed) and kill it if it has not within 5 s."""
        proc = self.process
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


_WORKERS = {}  # command -> (environment fingerprint, WarmWorker)
_RETIRED = []  # workers left to finish their jobs after the environment changed


def _fingerprint() -> tuple:
    """The variables that change what a worker does (model folders, devices, library path)."""
    env = libraryEnvironment()
    keys = sorted(k for k in env if k.startswith(("BRAINSPINEAI", "CUDA", "PYTORCH", "OMP_", "MKL_"))
                  or k in ("PYTHONPATH", "HOME", "PATH"))
    return tuple((k, env[k]) for k in keys)


def sharedWorker(command: str) -> WarmWorker:
    """The process-wide worker for ``command`` (``"classify"`` / ``"segment"``); a new one when
    the environment it was started with has changed (the old one ends once idle)."""
    fp = _fingerprint()
    old = _WORKERS.get(command)
    if old is not None and old[0] != fp:
        if old[1].jobs:
            _RETIRED.append(old[1])
        else:
            old[1].stop()
        old = None
    if old is None:
        _WORKERS[command] = (fp, WarmWorker(preload=command))
    for w in [w for w in _RETIRED if not w.jobs]:
        _RETIRED.remove(w)
        w.stop()
    return _WORKERS[command][1]


def warmWorkerEnabled() -> bool:
    return os.environ.get("BRAINSPINEAI_WARM_WORKER", "1").strip().lower() not in ("0", "false", "no", "off")


def startJob(argv, workdir=None, context=None):
    """Run ``brainspineai <argv>`` in the background: in the warm worker for ``classify`` /
    ``segment`` (unless ``BRAINSPINEAI_WARM_WORKER=0``), otherwise as its own process. Returns a
    job with :class:`BackgroundJob`'s interface."""
    from .background import cliCommand

    argv = [str(a) for a in argv]
    if argv and argv[0] in WARM_COMMANDS and warmWorkerEnabled():
        return sharedWorker(argv[0]).submit(argv, workdir, context)
    return BackgroundJob(cliCommand(*argv), workdir, context=context)


def stopAll() -> None:
    """End every worker (at Slicer's exit or in tests)."""
    for w in [w for _, w in _WORKERS.values()] + _RETIRED:
        w.stop()
    _WORKERS.clear()
    del _RETIRED[:]


atexit.register(stopAll)


def waitReady(worker: WarmWorker, timeout: float = 300.0) -> bool:  # for scripts and tests
    """Block until ``worker`` answers a request (it has started and read its first line)."""
    job = worker.submit(["classify", "--help"])
    t0 = time.monotonic()
    while not job.poll() and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    return job.poll()
