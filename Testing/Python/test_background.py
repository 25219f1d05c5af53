"""BackgroundJob, the process runner of every Slicer module, reads a job's output whatever
the locale of the process that runs it (VTK / Slicer may set the C locale)."""
from __future__ import annotations

import locale
import sys

import pytest

from BrainSpineAILib.background import BackgroundJob

CHILD = r"""
import json, sys
sys.stderr.write("epoch 1/2 \u2588\u2588\u2588\u2588 50%\n"); sys.stderr.flush()
print(json.dumps({"event": "progress", "fraction": 0.5, "message": "r\u00e9gion WT \u2013 100 ml"}, ensure_ascii=False))
print(json.dumps({"event": "done", "result": {"ok": True}}))
sys.stderr.write("brainspineai: error: \u00e9chec de lecture\n")
"""


@pytest.fixture
def c_locale():
    saved = locale.setlocale(locale.LC_ALL)
    locale.setlocale(locale.LC_ALL, "C")
    yield
    locale.setlocale(locale.LC_ALL, saved)


def test_non_ascii_output_is_read_under_the_c_locale(c_locale):
    job = BackgroundJob([sys.executable, "-c", CHILD])
    assert job.wait(timeout=60)
    job.poll()
    assert job.process.returncode == 0
    kinds = [e["event"] for e in job.events]
    assert kinds == ["progress", "done"], job.logLines
    assert job.events[0]["message"] == "r\u00e9gion WT \u2013 100 ml"
    assert job.result == {"ok": True}
    assert job.errorText == "brainspineai: error: \u00e9chec de lecture"
    assert any("\u2588" in line for line in job.logLines)
