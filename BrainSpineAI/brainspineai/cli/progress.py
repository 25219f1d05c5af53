"""Progress of a running command: a one-line bar on the terminal, or JSON lines for programs.

``--progress text`` (the default) draws ``[#####.....]  42%  message`` on stderr, rewritten in
place, but only when stderr is a terminal (nothing in logs and pipes) and only once the command
has run for :data:`DELAY_S` seconds (a quick command shows nothing). ``--progress jsonl`` prints
``{"event": "progress", "fraction": 0..1, "message": str}`` lines on stdout (the protocol of
:mod:`BrainSpineAILib.background` and of the ``worker`` command).
"""
from __future__ import annotations

import json
import sys
import time

DELAY_S = 1.0
WIDTH = 30


def add_progress_arg(p) -> None:
    """The ``--progress {text,jsonl}`` option every inference command takes."""
    p.add_argument("--progress", choices=["text", "jsonl"], default="text",
                   help="text: a bar on the terminal (stderr) for runs over a second; "
                        "jsonl: progress and result as JSON lines on stdout (for 3D Slicer and scripts)")


def json_line(obj) -> None:
    print(json.dumps(obj), flush=True)


class TerminalBar:
    """Callable ``(fraction, message)`` drawing a bar on ``stream`` (a terminal); :meth:`close`
    clears the line. Draws nothing before ``delay`` seconds have passed."""

    def __init__(self, stream=None, delay: float = DELAY_S):
        self.stream = stream if stream is not None else sys.stderr
        self.t0 = time.monotonic()
        self.delay = delay
        self.drawn = False

    def __call__(self, fraction: float, message: str = "") -> None:
        if time.monotonic() - self.t0 < self.delay:
            return
        f = min(max(float(fraction), 0.0), 1.0)
        n = int(round(f * WIDTH))
        line = f"[{'#' * n}{'.' * (WIDTH - n)}] {f:4.0%}  {message}"[:100]
        self.stream.write("\r" + line.ljust(100) + "\r")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r" + " " * 100 + "\r")
            self.stream.flush()
            self.drawn = False


class _Null:
    def __call__(self, fraction, message=""):
        pass

    def close(self):
        pass


class JsonProgress(_Null):
    def __call__(self, fraction, message=""):
        json_line({"event": "progress", "fraction": round(float(fraction), 3), "message": message})


def make_progress(mode: str, stream=None):
    """A progress callable ``(fraction, message)`` with ``close()`` for ``--progress mode``:
    JSON lines for ``"jsonl"``; a :class:`TerminalBar` for ``"text"`` when ``stream`` (default
    stderr) is a terminal; otherwise one that does nothing."""
    if mode == "jsonl":
        return JsonProgress()
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return TerminalBar(stream) if tty else _Null()


def scaled(progress, start: float, stop: float, prefix: str = ""):
    """``progress`` mapped onto ``[start, stop]`` (one item of a batch), messages prefixed."""
    if progress is None:
        return None
    return lambda f, m="": progress(start + (stop - start) * float(f), prefix + m)
