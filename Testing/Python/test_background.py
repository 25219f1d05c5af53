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


# ------------------------------------------------------------------ which Python, which window
def test_pythonslicer_on_path_is_used(monkeypatch, tmp_path):
    from BrainSpineAILib import background

    monkeypatch.setattr(background.shutil, "which", lambda name: "/opt/Slicer/bin/PythonSlicer" if name == "PythonSlicer" else None)
    assert background.pythonExecutable() == "/opt/Slicer/bin/PythonSlicer"
    assert background.cliCommand("classify", tmp_path / "x.nrrd")[:3] == ["/opt/Slicer/bin/PythonSlicer", "-m", "brainspineai"]


def test_inside_slicer_without_pythonslicer_raises_instead_of_starting_slicer(monkeypatch):
    """Item 10: in Slicer, sys.executable is the Slicer application; a job must never start it."""
    import types

    from BrainSpineAILib import background

    monkeypatch.setattr(background.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "slicer", types.SimpleNamespace(app=object()))  # Slicer's own Python
    with pytest.raises(RuntimeError, match="PythonSlicer executable was not found"):
        background.pythonExecutable()
    with pytest.raises(RuntimeError, match="PythonSlicer"):
        background.BackgroundJob(background.cliCommand("models"))


@pytest.mark.parametrize("exe", ["/opt/Slicer-5.8.1/bin/SlicerApp-real", r"C:\Slicer 5.10.0\bin\SlicerApp-real.exe",
                                 "/Applications/Slicer.app/Contents/MacOS/Slicer"])
def test_slicer_application_as_interpreter_raises(monkeypatch, exe):
    from BrainSpineAILib import background

    monkeypatch.setattr(background.shutil, "which", lambda name: None)
    monkeypatch.setattr(background.sys, "executable", exe.replace("\\", "/"))
    with pytest.raises(RuntimeError, match="Slicer application"):
        background.pythonExecutable()


def test_outside_slicer_this_interpreter_runs_jobs(monkeypatch):
    """The slicer-core wheel (no slicer.app) and plain Python: this interpreter."""
    from BrainSpineAILib import background

    monkeypatch.setattr(background.shutil, "which", lambda name: None)
    assert background.pythonExecutable() == sys.executable


def test_windows_jobs_start_in_a_hidden_console_window(monkeypatch):
    """Item 7: the STARTUPINFO that slicer.util.launchConsoleProcess uses (dwFlags 1, wShowWindow 0)."""
    from BrainSpineAILib import background

    class StartupInfo:  # subprocess.STARTUPINFO exists on Windows only
        def __init__(self):
            self.dwFlags, self.wShowWindow = 0, 1

    monkeypatch.setattr(background.subprocess, "STARTUPINFO", StartupInfo, raising=False)
    monkeypatch.setattr(background.subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200, raising=False)
    options = background.processOptions("nt")
    assert options["creationflags"] == 0x200
    assert options["startupinfo"].dwFlags & 1 and options["startupinfo"].wShowWindow == 0
    assert "start_new_session" not in options
    assert background.processOptions("posix") == {"start_new_session": True}


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as dead)."""
    from pathlib import Path

    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_job_runs_in_its_own_process_group_and_cancel_kills_the_tree():
    import os
    import time
    from pathlib import Path

    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc (Linux) to see the grandchild")
    child = ("import json, subprocess, sys, time; "
             "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
             "print(json.dumps({'event': 'progress', 'fraction': 0.1, 'message': str(p.pid)}), flush=True); "
             "time.sleep(60)")
    job = BackgroundJob([sys.executable, "-c", child])
    assert os.getpgid(job.process.pid) == job.process.pid != os.getpgid(0)  # its own group
    for _ in range(400):
        job.poll()
        if job.events:
            break
        time.sleep(0.05)
    grandchild = int(job.events[0]["message"])
    assert _alive(grandchild)
    job.cancel()
    assert job.poll() and job.cancelled and not job.succeeded
    for _ in range(100):
        if not _alive(grandchild):
            break
        time.sleep(0.05)
    assert not _alive(grandchild), "cancel left the job's own child running"
