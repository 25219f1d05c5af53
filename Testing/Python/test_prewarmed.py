"""The suite's prewarmed child processes (``prewarmed.py``): a ``python -m brainspineai`` forked
from the zygote behaves as a fresh process does (output, exit status, environment, working
folder, own session, signals), and saves the imports."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

import prewarmed
from conftest import KAGGLE, LIB_PARENT, need

pytestmark = pytest.mark.skipif(not prewarmed.enabled() or os.name != "posix",
                                reason="prewarmed children are off (BRAINSPINEAI_TEST_CLI=process) or not POSIX")


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(LIB_PARENT), PYTHONIOENCODING="utf-8")
    env.update(extra)
    return env


def test_a_forked_child_prints_and_exits_as_a_fresh_process(tmp_path):
    image = sorted((need(KAGGLE) / "glioma").iterdir())[0]
    for argv in (["classify", str(image), "--json", "-"], ["classify", str(tmp_path / "missing.png")]):
        cmd = [sys.executable, "-m", "brainspineai", *argv]
        forked = prewarmed.run(cmd, env=_env(), capture_output=True, text=True, cwd=tmp_path)
        fresh = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=tmp_path)
        assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert fresh.returncode == 2 and fresh.stderr.startswith("brainspineai: error: input not found")


def test_a_forked_child_has_its_environment_folder_session_and_signals(tmp_path):
    proc = prewarmed.popen([sys.executable, "-m", "brainspineai", "worker"], env=_env(),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=tmp_path, start_new_session=True)
    try:
        assert isinstance(proc, prewarmed.ForkedPopen)
        assert '"ready"' in proc.stdout.readline()
        assert os.readlink(f"/proc/{proc.pid}/cwd") == str(tmp_path)
        assert os.getsid(proc.pid) == proc.pid != os.getsid(0)  # its own session, as start_new_session
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    # the child's own environment (the zygote's differs): a model folder only it is told of
    models = tmp_path / "models"
    shutil.copytree(LIB_PARENT / "brainspineai" / "zoo" / "tcga-lgg-prognosis", models / "my-prognosis-model")
    r = prewarmed.run([sys.executable, "-m", "brainspineai", "models"], env=_env(BRAINSPINEAI_MODEL_PATH=str(models)),
                      capture_output=True, text=True)
    assert r.returncode == 0 and str(models / "my-prognosis-model") in r.stdout, r.stderr
    # stdin closed: the worker ends by itself with exit status 0
    proc = prewarmed.popen([sys.executable, "-m", "brainspineai", "worker"], env=_env(), stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate("", timeout=60)
    assert proc.returncode == 0 and '"ready"' in out, err


def test_only_library_commands_are_forked_and_other_environments_get_their_own_zygote():
    assert not prewarmed.is_library_command([sys.executable, "-c", "pass"])
    assert not prewarmed.is_library_command([sys.executable, "-X", "importtime", "-m", "brainspineai"])
    assert prewarmed.is_library_command([sys.executable, "-m", "brainspineai", "--version"])
    a = prewarmed._fingerprint(_env(BRAINSPINEAI_HOME="/a", PYTEST_CURRENT_TEST="x", PYTHONUNBUFFERED="1"))
    assert a == prewarmed._fingerprint(_env(BRAINSPINEAI_HOME="/b"))
    assert a != prewarmed._fingerprint(_env(OMP_NUM_THREADS="1")) != prewarmed._fingerprint(_env(TQDM_DISABLE="1"))
