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


@pytest.mark.slow
def test_a_forked_child_prints_and_exits_as_a_fresh_process(tmp_path):
    image = sorted((need(KAGGLE) / "glioma").iterdir())[0]
    for argv in (["classify", str(image), "--json", "-"], ["classify", str(tmp_path / "missing.png")]):
        cmd = [sys.executable, "-m", "brainspineai", *argv]
        forked = prewarmed.run(cmd, env=_env(), capture_output=True, text=True, cwd=tmp_path)
        fresh = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=tmp_path)
        assert isinstance(prewarmed.popen(cmd[:3] + ["--version"], env=_env(), stdout=subprocess.DEVNULL),
                          prewarmed.ForkedPopen)  # the forked path was the one taken
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
    assert prewarmed.is_library_command([sys.executable, "-u", "-m", "brainspineai", "train"])  # a torchrun worker
    assert prewarmed.is_library_command([sys.executable, "-m", "torch.distributed.run", "-m", "brainspineai"])
    assert not prewarmed.is_library_command([sys.executable, "-m", "pip", "install"])
    a = prewarmed._fingerprint(_env(BRAINSPINEAI_HOME="/a", PYTEST_CURRENT_TEST="x", PYTHONUNBUFFERED="1"))
    assert a == prewarmed._fingerprint(_env(BRAINSPINEAI_HOME="/b"))
    assert a != prewarmed._fingerprint(_env(OMP_NUM_THREADS="1")) != prewarmed._fingerprint(_env(TQDM_DISABLE="1"))


PROBE = """
import atexit, json, os, sys
mode = sys.argv[1]
if mode == "state":
    for name in {preload!r}:
        try:
            __import__(name)
        except ImportError:
            pass
    import logging, numpy, torch
    handlers = sorted(set(getattr(h.stream, "name", "?") for lg in [logging.root] + list(logging.Logger.manager.loggerDict.values())
                          for h in getattr(lg, "handlers", ()) if isinstance(h, logging.StreamHandler)))
    env = {{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "_"))}}
    print(json.dumps({{"env": env, "argv": sys.argv[1:], "path0": sys.path[0], "cwd": os.getcwd(),
                      "umask": os.umask(0o022), "stdio": [(s.encoding, s.errors, s.line_buffering, s.write_through)
                                                         for s in (sys.stdin, sys.stdout, sys.stderr)],
                      "line": sys.stdin.readline(), "handlers": handlers, "seed": torch.initial_seed()}}))
elif mode == "dist":  # a torchrun worker; what the preloaded imports set is checked in "state"
    import torch
    from lightning_fabric.utilities.rank_zero import rank_zero_only  # reads the rank at import
    pw = sys.modules.get("prewarmed")  # present in a forked child only
    env = {{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "_"))}}
    print(json.dumps({{"env": env, "import_keys": sorted(pw._IMPORT_ENV) if pw else [], "argv": sys.argv[1:], "cwd": os.getcwd(), "threads": torch.get_num_threads(),
                      "rank_zero_only": rank_zero_only.rank, "session_leader": os.getsid(0) == os.getpid(),
                      "stdio": [(s.encoding, s.errors, s.line_buffering, s.write_through) for s in (sys.stdout, sys.stderr)]}}),
          flush=True)
elif mode == "raise":
    atexit.register(lambda: print("atexit ran", flush=True))
    raise RuntimeError("boom")
elif mode == "interrupt":
    raise KeyboardInterrupt
elif mode == "exit-text":
    sys.exit("a message")
"""


@pytest.mark.slow
def test_a_forked_child_matches_a_fresh_interpreter_in_what_a_program_can_see(tmp_path):
    """A stand-in ``brainspineai`` package (its own zygote: another PYTHONPATH) prints what it
    sees, forked and fresh: environment (with what the preloaded imports set), argv, sys.path,
    folder, umask, stdio settings and newlines, logging handlers' streams, torch's seed drawn anew; an
    uncaught exception (traceback, atexit, exit 1), Ctrl-C (-SIGINT) and ``sys.exit(text)``."""
    import json

    pkg = tmp_path / "lib" / "brainspineai"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(PROBE.format(preload=prewarmed.PRELOAD))
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "lib"))
    env.pop("PYTHONUNBUFFERED", None)  # the buffered stdio branch (the suite's environment may set -u)
    old = os.umask(0o027)
    try:
        runs = {}
        for how, runner in (("forked", prewarmed.run), ("fresh", subprocess.run)):
            runs[how] = {m: runner([sys.executable, "-m", "brainspineai", m], env=env, capture_output=True, text=True,
                                   cwd=work, input="a\rb\r\n") for m in ("state", "raise", "interrupt", "exit-text")}
        again = prewarmed.run([sys.executable, "-m", "brainspineai", "state"], env=env, capture_output=True, text=True,
                              cwd=work, input="")
    finally:
        os.umask(old)
        prewarmed.stop_for(env)  # about 1 GB that no other test uses
    a, b = json.loads(runs["forked"]["state"].stdout), json.loads(runs["fresh"]["state"].stdout)
    assert a.pop("seed") != json.loads(again.stdout)["seed"]  # each forked child draws its own, as a fresh one
    b.pop("seed")
    assert a == b and a["umask"] == 0o027 and a["line"] == "a\rb\r\n"
    for mode in ("raise", "interrupt", "exit-text"):
        f, r = runs["forked"][mode], runs["fresh"][mode]
        assert (f.returncode, f.stdout, f.stderr.splitlines()[-1]) == (r.returncode, r.stdout, r.stderr.splitlines()[-1])
    assert runs["fresh"]["raise"].returncode == 1 and runs["fresh"]["raise"].stdout == "atexit ran\n"
    assert runs["fresh"]["interrupt"].returncode == -signal.SIGINT
    assert runs["fresh"]["exit-text"].returncode == 1 and runs["fresh"]["exit-text"].stderr == "a message\n"


@pytest.mark.slow
def test_torchrun_workers_are_forked_and_see_what_fresh_workers_see(tmp_path):
    """``torchrun --nproc_per_node 2 -m brainspineai`` (the suite's DDP tests) with the stand-in
    package, forked (torchrun and its two workers) and fresh: each worker sees the same
    environment (torchrun's rank variables, ``OMP_NUM_THREADS=1`` that torchrun sets), argv,
    folder, stdio (``python -u``), torch thread count, Lightning's rank read at import and
    a session of its own. The variables that the preloaded
    imports set are left out here: the test above compares them with a fresh import."""
    import json
    import socket

    pkg = tmp_path / "lib" / "brainspineai"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(PROBE.format(preload=prewarmed.PRELOAD))
    log = tmp_path / "forks.log"
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "lib"), PREWARMED_CPU_LOG=str(log))
    env.pop("OMP_NUM_THREADS", None)  # torchrun sets it to 1 for its workers
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "brainspineai", "dist"]
    try:
        runs = {how: runner(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, stdin=subprocess.DEVNULL,
                            timeout=300) for how, runner in (("forked", prewarmed.run), ("fresh", subprocess.run))}
    finally:
        prewarmed.stop_for(env)
    forks = [json.loads(line.split("\t")[2]) for line in log.read_text().splitlines()]
    assert sorted(f[-1] for f in forks) == ["dist", "dist", "dist"]  # torchrun and both workers were forked

    def workers(r):
        assert r.returncode == 0, r.stderr[-2000:]
        docs = sorted((json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")),
                      key=lambda d: d["env"]["RANK"])
        for d in docs:
            for k in ("TORCHELASTIC_ERROR_FILE", "TORCHELASTIC_RUN_ID", "PREWARMED_CPU_LOG"):  # per run
                d["env"].pop(k, None)
        return docs

    forked, fresh = workers(runs["forked"]), workers(runs["fresh"])
    imported = {k for d in forked for k in d.pop("import_keys")}  # compared with a fresh import in the state test
    for d in forked + fresh:
        d.pop("import_keys", None)
        for k in imported:
            d["env"].pop(k, None)
    assert [d["env"]["RANK"] for d in fresh] == ["0", "1"] and fresh[0]["threads"] == 1
    assert [d["rank_zero_only"] for d in fresh] == [0, 1] and all(d["session_leader"] for d in fresh)
    assert forked == fresh
