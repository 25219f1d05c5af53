"""Background ``brainspineai`` processes for the Slicer modules, so the GUI never waits.

A :class:`BackgroundJob` runs one CLI command in its own process group (the Python that
Slicer ships, see :func:`pythonExecutable`; never Slicer itself; on Windows without a console
window, see :func:`processOptions`), reads the JSON lines it prints on stdout and
keeps the latest progress. Every CLI job speaks the same line protocol:

- ``{"event": "progress", "fraction": 0..1, "message": str}`` (inference jobs);
- ``{"event": "step" | "epoch", "epoch", "epochs", "step", "steps", "loss", "metrics", "eta_s"}``
  (training jobs, see :mod:`brainspineai.engine`);
- ``{"event": "done", "result": {...}}`` once, at the end of a successful job.

The last non-empty stderr line is kept as the error text (the CLI's
``brainspineai: error: ...``). ``cancel()`` kills the whole process tree.
"""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

LIBRARY_PARENT = Path(__file__).resolve().parent.parent  # folder that holds the brainspineai package


def _insideSlicer() -> bool:
    """True in Slicer's own Python (``slicer.app`` exists; the slicer-core wheel has none)."""
    slicer = sys.modules.get("slicer")
    return slicer is not None and getattr(slicer, "app", None) is not None


def pythonExecutable() -> str:
    """The Python that runs background jobs: Slicer's ``PythonSlicer`` (found on ``PATH``, which
    Slicer sets, as ``slicer.util._executePythonModule`` does), otherwise, outside Slicer, this
    interpreter.

    :raises RuntimeError: inside Slicer without ``PythonSlicer`` on ``PATH``, or when this
        interpreter is the Slicer application itself: ``sys.executable`` would start a second
        Slicer instead of running the job.
    """
    exe = shutil.which("PythonSlicer")
    if exe:
        return exe
    name = Path(sys.executable or "").name.lower()
    if _insideSlicer() or name.startswith("slicer"):
        raise RuntimeError(
            "cannot start the background process: the PythonSlicer executable was not found on PATH "
            f"(this Python is the Slicer application, {sys.executable!r}, which cannot run a script). "
            "Start Slicer with its launcher (Slicer / Slicer.exe), which puts PythonSlicer on PATH.")
    return sys.executable


STARTF_USESHOWWINDOW = 0x00000001  # Windows STARTUPINFO.dwFlags: use wShowWindow
SW_HIDE = 0  # Windows ShowWindow: hidden


def processOptions(osName: str | None = None) -> dict:
    """Keyword arguments of ``subprocess.Popen`` for a background job.

    POSIX: its own session (process group), so :meth:`BackgroundJob.cancel` can kill the tree.
    Windows: a new process group and a hidden console window, as ``slicer.util.launchConsoleProcess``
    does (``STARTUPINFO`` with ``dwFlags = STARTF_USESHOWWINDOW``, ``wShowWindow = SW_HIDE``);
    processes the job starts (torchrun workers) share that hidden console.
    """
    if (osName or os.name) == "posix":
        return {"start_new_session": True}
    info = subprocess.STARTUPINFO()
    info.dwFlags |= STARTF_USESHOWWINDOW
    info.wShowWindow = SW_HIDE
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP, "startupinfo": info}


def libraryEnvironment(extra: dict | None = None) -> dict:
    """This process's environment with the ``brainspineai`` package first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONIOENCODING"] = "utf-8"  # the job's stdout / stderr, read back as UTF-8 by BackgroundJob
    env["PYTHONPATH"] = os.pathsep.join([str(LIBRARY_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra or {})
    return env


def cliCommand(*args) -> list[str]:
    """``[python, -m, brainspineai, *args]`` with every argument as a string."""
    return [pythonExecutable(), "-m", "brainspineai", *map(str, args)]


class BackgroundJob:
    """A ``brainspineai`` CLI run in a separate process (its own process group).

    :param command: argument list (see :func:`cliCommand`).
    :param workdir: temporary folder of the job, removed by :meth:`cleanup` (``None``: none).
    :param env: environment (default :func:`libraryEnvironment`).
    :param context: anything the caller wants back when the job ends (e.g. node IDs).

    ``poll()`` returns True once the process ended; ``events`` holds every JSON event read
    so far, ``progressText`` / ``fraction`` / ``etaSeconds`` the latest progress, ``result``
    the ``done`` event's result, ``errorText`` the last stderr line.
    """

    def __init__(self, command, workdir: Path | None = None, env=None, context: dict | None = None):
        self.command = list(command)
        self.workdir = Path(workdir) if workdir is not None else None
        self.context = dict(context or {})
        self.progressText = "starting"
        self.fraction = 0.0
        self.etaSeconds = None
        self.result = None
        self.errorText = ""
        self.cancelled = False
        self.events: list[dict] = []
        self.logLines: list[str] = []
        self._newEvents: list[dict] = []
        self._lines = queue.Queue()
        kwargs = processOptions()
        # UTF-8 both ways whatever the locale (VTK / Slicer may set the C locale in this process;
        # progress bars and messages are not ASCII)
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        encoding="utf-8", errors="replace",
                                        env=env if env is not None else libraryEnvironment(), **kwargs)
        self._readers = [threading.Thread(target=self._pump, args=(s, tag), daemon=True)
                         for s, tag in ((self.process.stdout, "out"), (self.process.stderr, "err"))]
        for t in self._readers:
            t.start()

    @property
    def inputNodeID(self):  # the classification job's input (kept for callers of the first version)
        return self.context.get("inputNodeID")

    def _pump(self, stream, tag):
        for line in stream:
            self._lines.put((tag, line.rstrip("\n")))

    def _drain(self):
        while True:
            try:
                tag, line = self._lines.get_nowait()
            except queue.Empty:
                return
            if tag == "err":
                if line.strip():
                    self.errorText = line.strip()
                    self.logLines.append(line)
                continue
            try:
                event = json.loads(line)
            except ValueError:
                if line.strip():
                    self.logLines.append(line)
                continue
            if not isinstance(event, dict):
                continue
            self.events.append(event)
            self._newEvents.append(event)
            kind = event.get("event")
            if kind == "progress":
                self.fraction = float(event.get("fraction", 0.0))
                self.progressText = event.get("message", "")
            elif kind in ("step", "epoch"):
                epochs, steps = max(int(event.get("epochs") or 1), 1), max(int(event.get("steps") or 1), 1)
                epoch, step = int(event.get("epoch") or 0), int(event.get("step") or 0)
                if kind == "epoch":
                    self.fraction = min(1.0, epoch / epochs)
                else:
                    self.fraction = min(1.0, (max(epoch - 1, 0) + step / steps) / epochs)
                self.etaSeconds = event.get("eta_s")
                loss = event.get("loss")
                self.progressText = f"epoch {epoch}/{epochs}" + (f", loss {loss:.4g}" if isinstance(loss, (int, float)) else "")
            elif kind == "done":
                self.result = event.get("result")
                self.fraction, self.progressText = 1.0, "done"

    def takeNewEvents(self) -> list[dict]:
        """Events read since the last call (for a GUI that draws curves as they come)."""
        self._drain()
        out, self._newEvents = self._newEvents, []
        return out

    def poll(self) -> bool:
        """Collect progress; True when the process has ended."""
        self._drain()
        if self.process.poll() is None:
            return False
        for t in self._readers:
            t.join(timeout=5)
        self._drain()
        return True

    def wait(self, timeout=None) -> bool:
        """Block until the process ends (for scripts and tests; the GUI polls instead)."""
        self.process.wait(timeout=timeout)
        return self.poll()

    @property
    def succeeded(self) -> bool:
        return self.process.poll() == 0 and not self.cancelled

    def checkFinished(self, what: str) -> dict:
        """The ``done`` event's result of a job that ended well.

        :param what: the job's name in messages (e.g. ``"segmentation"``).
        :raises RuntimeError: the job is still running, was cancelled, or failed (message: the
            CLI's ``brainspineai: error: ...`` line when there is one).
        """
        if not self.poll():
            raise RuntimeError(f"{what} is still running")
        if self.cancelled:
            raise RuntimeError(f"{what} was cancelled")
        if self.process.returncode != 0 or self.result is None:
            raise RuntimeError(self.errorText or f"{what} process failed (exit code {self.process.returncode})")
        return self.result

    def cancel(self) -> None:
        """Kill the process and everything it started; remove the temporary files."""
        self.cancelled = True
        if self.process.poll() is None:
            try:
                if os.name == "posix":
                    os.killpg(self.process.pid, signal.SIGKILL)
                else:
                    subprocess.run(["taskkill", "/F", "/T", "/PID", str(self.process.pid)], capture_output=True,
                                   startupinfo=processOptions()["startupinfo"])  # no console flash
            except (ProcessLookupError, PermissionError):
                pass
            self.process.wait(timeout=30)
        self.poll()
        self.cleanup()

    def cleanup(self) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
