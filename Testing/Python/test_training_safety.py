"""Training runs are safe with users' files (issue 13, items 3, 11 and 15) and ``train
classifier`` runs on the shared engine (issue 12): DDP under torchrun, checkpoints loaded with
``weights_only=True``, resume refused under other settings, a lock per ``--out``, a full disk
and SIGTERM / SIGKILL leave the last good checkpoint and no stray files. Real slices, tiny
settings (8 images per class, 32 px, one or a few epochs)."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from brainspineai.catalogue import read_card
from conftest import KAGGLE, LIB_PARENT, need, run_cli
import prewarmed

TINY = ["--limit-per-class", "8", "--image-size", "32", "--batch-size", "8", "--device", "cpu"]
CLS = ["--architecture", "resnet10-w32"]


def _one_error_line(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brainspineai: error: "), r.stderr[-3000:]
    return lines[0]


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _stray(tmp_path, name: str) -> list:
    """Anything left beside a model folder ``name`` or in its work folder but the model, the
    work folder, its checkpoint and its lock (and the test's own events file)."""
    keep = {name, f"{name}.work", "events.jsonl", "ev.jsonl"}
    out = [p.name for p in tmp_path.iterdir() if p.name not in keep]
    work = tmp_path / f"{name}.work"
    if work.is_dir():
        out += [f"{name}.work/{p.name}" for p in work.iterdir() if p.name not in ("last.pt", "lock")]
    return sorted(out)


@pytest.mark.slow
def test_classifier_trains_in_two_ddp_processes_under_torchrun(tmp_path):
    """`torchrun --nproc_per_node 2 -m brainspineai train classifier` (gloo on the CPU): each
    process trains on its share, one model, one reporter, the card says two processes."""
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(LIB_PARENT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "brainspineai", "train", "classifier", "--data", str(need(KAGGLE)), "--out", str(tmp_path / "m"),
           "--limit-per-class", "8", "--image-size", "32", "--epochs", "1", "--batch-size", "4", "--device", "cpu",
           *CLS, "--events", str(tmp_path / "ev.jsonl")]
    r = prewarmed.run(cmd, capture_output=True, text=True, env=env, timeout=600)  # torchrun and its workers forked
    assert r.returncode == 0, r.stderr[-3000:]
    card = read_card(tmp_path / "m")
    assert card["training"]["processes"] == 2 and len(card["training"]["history"]) == 1
    assert 0 <= card["training"]["history"][0]["val_accuracy"] <= 1
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("data") == 1 and kinds.count("epoch") == 1 and kinds[-1] == "done"  # one reporter
    assert all(e["pipeline"] == "classifier" for e in events)
    # 28 training images, 4 per process and step: 3 steps of 8 images (the rest of the permutation dropped)
    assert [e["steps"] for e in events if e["event"] == "epoch"] == [3]
    assert r.stdout.count("model written to") == 1
    ck = torch.load(tmp_path / "m.work" / "last.pt", map_location="cpu", weights_only=True)
    assert json.loads(ck["config"])["processes"] == 2 and ck["pipeline"] == "classifier"
    assert _stray(tmp_path, "m") == []


def _crafted_checkpoint(path, marker) -> None:
    """A ``last.pt`` whose pickle creates ``marker`` when unpickled without restrictions."""
    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').close()",))

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": 2, "pipeline": "classifier", "config": "{}", "model": Payload()}, path)


def test_crafted_checkpoint_payload_would_run_without_weights_only(tmp_path):
    """The control for the next test: the crafted file really runs code when fully unpickled."""
    marker = tmp_path / "ran"
    _crafted_checkpoint(tmp_path / "last.pt", marker)
    torch.load(tmp_path / "last.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("pipeline, extra", [("classifier", CLS), ("affcl", ["--backbone", "resnet10-w32",
                                                                              "--queue-size", "8"])])
def test_crafted_checkpoint_is_refused_and_runs_no_code(tmp_path, pipeline, extra):
    marker = tmp_path / "code-ran"
    ckpt = tmp_path / "m.work" / "last.pt"
    _crafted_checkpoint(ckpt, marker)
    before = _sha(ckpt)
    r = run_cli("train", pipeline, "--data", need(KAGGLE), "--out", tmp_path / "m", "--epochs", "1", *TINY, *extra,
                "--resume")
    line = _one_error_line(r)
    assert "last.pt" in line and "resumed safely" in line
    assert not marker.exists(), "the checkpoint's pickle ran code"
    assert _sha(ckpt) == before and not (tmp_path / "m").exists()


@pytest.mark.slow
def test_resume_with_other_settings_is_refused_naming_them(tmp_path):
    from brainspineai.classification.training import TrainConfig, train_classifier

    out = tmp_path / "m"
    train_classifier(need(KAGGLE), out, TrainConfig(architecture="resnet10-w32", epochs=1, limit_per_class=8,
                                                    image_size=32, batch_size=8, device="cpu"))
    ckpt, card = out.with_name("m.work") / "last.pt", _sha(out / "model.json")
    before = _sha(ckpt)
    r = run_cli("train", "classifier", "--data", need(KAGGLE), "--out", out, *CLS, "--resume", "--device", "cpu",
                "--limit-per-class", "8", "--image-size", "48", "--batch-size", "4", "--epochs", "2", "--seed", "1",
                "--lr", "0.01", "--val-fraction", "0.2")
    line = _one_error_line(r)
    assert "other settings" in line
    for name in ("image_size 48 (checkpoint 32)", "batch_size 4 (checkpoint 8)", "epochs 2 (checkpoint 1)",
                 "seed 1 (checkpoint 0)", "lr 0.01 (checkpoint 0.002)", "val_fraction 0.2 (checkpoint 0.15)"):
        assert name in line, (name, line)
    assert _sha(ckpt) == before and _sha(out / "model.json") == card
    # a setting that changes nothing of the run (the device) is no reason to refuse
    r = run_cli("train", "classifier", "--data", need(KAGGLE), "--out", out, *CLS, "--resume", "--epochs", "1",
                *TINY[:-2], "--device", "auto" if not torch.cuda.is_available() else "cpu")
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("pipeline, first, extra", [
    ("affcl", dict(backbone="resnet10-w32", queue_size=8), ["--backbone", "resnet10-w32", "--queue-size", "8"]),
    ("simclr", dict(backbone="resnet10-w32"), ["--backbone", "resnet10-w32"]),
])
@pytest.mark.slow
def test_resume_with_other_settings_is_refused_for_the_other_pipelines(tmp_path, pipeline, first, extra):
    if pipeline == "affcl":
        from brainspineai.classification.affcl import AFFCLConfig as Config, train_affcl as train
    else:
        from brainspineai.classification.simclr import SimCLRConfig as Config, train_simclr as train
    out = tmp_path / "m"
    train(need(KAGGLE), out, Config(epochs=1, limit_per_class=8, image_size=32, batch_size=8, device="cpu", **first))
    before = _sha(out.with_name("m.work") / "last.pt")
    r = run_cli("train", pipeline, "--data", need(KAGGLE), "--out", out, *TINY, *extra, "--epochs", "1",
                "--seed", "3", "--lr", "0.05", "--resume")
    line = _one_error_line(r)
    assert "seed 3 (checkpoint 0)" in line and "lr 0.05 (checkpoint 0.002)" in line
    assert _sha(out.with_name("m.work") / "last.pt") == before


def test_second_run_on_the_same_out_is_refused(tmp_path):
    from brainspineai.checkpoint import run_lock

    out = tmp_path / "m"
    with run_lock(out):  # this process is "the first run"
        r = run_cli("train", "classifier", "--data", need(KAGGLE), "--out", out, "--epochs", "1", *TINY, *CLS,
                    process=True)  # another process: a lock of this process's own does not stop it
        line = _one_error_line(r)
        assert "another training run is writing this model" in line and f"process {os.getpid()}" in line
        assert not out.exists() and os.listdir(tmp_path / "m.work") == ["lock"]
    assert not (tmp_path / "m.work").exists()  # released, and nothing left behind by a run that wrote nothing


@pytest.mark.slow
def test_full_disk_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """ENOSPC while writing the second epoch's checkpoint: one line, exit 2, the first
    epoch's checkpoint intact, no temporary file, no model."""
    from brainspineai.cli.main import main

    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) >= 2:
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "m"
    code = main(["train", "classifier", "--data", str(need(KAGGLE)), "--out", str(out), "--epochs", "3", *TINY, *CLS])
    err = capsys.readouterr().err
    assert code == 2 and len(calls) == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brainspineai: error: cannot write the checkpoint"), err
    assert "No space left on device" in lines[0] and "last good checkpoint is kept" in lines[0]
    ck = torch.load(out.with_name("m.work") / "last.pt", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 1 and len(json.loads(ck["history"])) == 1
    assert not out.exists() and _stray(tmp_path, "m") == []
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["train", "classifier", "--data", str(need(KAGGLE)), "--out", str(out), "--epochs", "3", *TINY, *CLS,
                 "--resume"]) == 0
    assert [h["epoch"] for h in read_card(out)["training"]["history"]] == [1, 2, 3]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.slow
def test_killed_training_leaves_no_partial_model_and_resumes(tmp_path, sig):
    """Kill `train classifier` after its first epoch event. SIGTERM: one line, exit 143, the
    files being written removed at once. SIGKILL: what a kill in the middle of a write leaves
    (a temporary checkpoint, a half-written model folder beside --out; planted here, since a
    kill lands there only by chance) is removed by the next start. Either way no model folder,
    and --resume completes every epoch."""
    out, events = tmp_path / "m", tmp_path / "events.jsonl"
    args = ["train", "classifier", "--data", str(need(KAGGLE)), "--out", str(out), "--epochs", "5", *TINY, *CLS,
            "--events", str(events)]
    env = dict(os.environ, PYTHONPATH=str(LIB_PARENT))
    proc = prewarmed.popen([sys.executable, "-m", "brainspineai", *args], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (
            events.exists() and '"event": "epoch"' in events.read_text()):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()[-2000:]
    os.kill(proc.pid, sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert not out.exists(), "a killed run must not leave a model folder"
    work = tmp_path / "m.work"
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
        assert "Traceback" not in stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("brainspineai: training stopped by SIGTERM"), stderr
        assert "--resume" in lines[0]
        assert _stray(tmp_path, "m") == []  # removed before the process ended
    else:
        assert proc.returncode == -signal.SIGKILL
        (work / ".last.pt.k1ll3d00.tmp").write_bytes(b"half a checkpoint")
        (tmp_path / ".m.abcd_123").mkdir()
        (tmp_path / ".m.abcd_123" / "model.safetensors").write_bytes(b"half a model")
    done = torch.load(work / "last.pt", map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= done < 5
    r = run_cli(*args, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    ev = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["epoch"] for e in ev if e["event"] == "resume"] == [done]
    assert [e["epoch"] for e in ev if e["event"] == "epoch"][-(5 - done):] == list(range(done + 1, 6))
    assert [h["epoch"] for h in read_card(out)["training"]["history"]] == [1, 2, 3, 4, 5]
    assert _stray(tmp_path, "m") == []


def test_next_start_removes_a_killed_model_write_and_restores_a_moved_model(tmp_path):
    """A kill between the two renames of ``catalogue.write_model_folder`` leaves the previous
    model moved aside and the new one in a temporary folder: the next run on that --out puts
    the previous model back and removes the temporary one; folders that only look alike stay."""
    from brainspineai.checkpoint import run_lock

    out = tmp_path / "m"
    (tmp_path / ".m.old.abcd_123").mkdir()
    (tmp_path / ".m.old.abcd_123" / "model.json").write_text('{"id": "m"}')
    (tmp_path / ".m.zyxw9876").mkdir()
    (tmp_path / ".m.notours").mkdir()  # not a temporary name of ours
    (tmp_path / ".m.zyxw9876.txt").write_text("a user's file")
    with run_lock(out):
        with run_lock(out):  # re-entrant in one process
            pass
    assert (out / "model.json").read_text() == '{"id": "m"}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.notours", ".m.zyxw9876.txt", "m"]
