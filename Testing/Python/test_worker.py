"""The warm worker (issue 19): ``brainspineai worker``'s JSON-line protocol, and the client the
Slicer logic uses (started on first use, kept, restarted when it died, killed and restarted
by Cancel), on real slices and a real Slicer scene (``slicer-core``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import LIB_PARENT
import prewarmed


def _worker():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(LIB_PARENT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return prewarmed.popen([sys.executable, "-m", "brainspineai", "worker"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _send(proc, obj):
    proc.stdin.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    proc.stdin.flush()


def _until_exit(proc, job):
    events = []
    for line in proc.stdout:
        e = json.loads(line)
        events.append(e)
        if e.get("job") == job and e.get("event") == "exit":
            return events
    raise AssertionError(f"worker ended before job {job}: {events} {proc.stderr.read()[-2000:]}")


def test_protocol_two_slices_one_model_load(validation_images, tmp_path):
    """Two real slices in one worker: progress and result lines tagged with the job id, the
    second job served without loading anything (far quicker); a bad input and a command the
    worker does not run end with the CLI's exit status and one error line; a malformed request
    is answered; a queued job can be cancelled; stdin closed ends the worker."""
    glioma, pituitary = sorted(validation_images["glioma"])[0], sorted(validation_images["pituitary"])[0]
    proc = _worker()
    try:
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        _send(proc, {"op": "run", "id": "a", "argv": ["classify", str(glioma), "--device", "cpu", "--progress", "jsonl",
                                                      "--json", str(tmp_path / "a.json")]})
        first = _until_exit(proc, "a")
        _send(proc, {"op": "classify", "id": "b", "argv": [str(pituitary), "--device", "cpu", "--progress", "jsonl"]})
        second = _until_exit(proc, "b")
        kinds = [e["event"] for e in first]
        assert "progress" in kinds and kinds[-2:] == ["done", "exit"] and all(e["job"] == "a" for e in first)
        assert first[-2]["result"]["predicted"] == "glioma" and second[-2]["result"]["predicted"] == "pituitary"
        assert json.loads((tmp_path / "a.json").read_text())["predicted"] == "glioma"
        assert first[-1]["rc"] == 0 and second[-1]["rc"] == 0
        print(f"worker: first slice {first[-1]['seconds']:.2f} s (imports + model), second {second[-1]['seconds']:.2f} s")
        assert first[-1]["models_loaded"] == second[-1]["models_loaded"] == 1  # loaded once
        assert second[-1]["seconds"] < first[-1]["seconds"]
        _send(proc, {"op": "run", "id": "c", "argv": ["classify", str(tmp_path / "missing.png"), "--progress", "jsonl"]})
        bad = _until_exit(proc, "c")[-1]
        assert bad["rc"] == 2 and bad["error"].startswith("brainspineai: error: input not found")
        _send(proc, {"op": "run", "id": "d", "argv": ["train", "classifier"]})
        assert _until_exit(proc, "d")[-1]["rc"] == 2
        _send(proc, "not json")
        assert json.loads(proc.stdout.readline())["event"] == "error"
        _send(proc, {"op": "cancel", "id": "e"})  # cancelled before it is queued: dropped when its turn comes
        _send(proc, {"op": "run", "id": "e", "argv": ["classify", str(glioma), "--device", "cpu"]})
        dropped = _until_exit(proc, "e")
        assert len(dropped) == 1 and dropped[0]["rc"] == 130
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_a_second_segmentation_of_the_same_volumes_reuses_the_preprocessing(tmp_path):
    """Registration and brain extraction (``--preprocess auto``) are kept for the last volumes:
    the same case again gives the same labelmap without redoing them (``"reused": true``);
    other settings or another volume are preprocessed anew."""
    import numpy as np
    import SimpleITK as sitk

    from conftest import BRATS15, at_2mm, need

    case = need(BRATS15) / "brats_2013_pat0005_1"
    # at the segmenter's own 2 mm (what the reuse does not depend on), a quarter of the work
    flair, t1c = (at_2mm(case / f"{s}_subtrMeanDivStd.nii.gz", tmp_path / f"{s}.nii.gz") for s in ("Flair", "T1c"))
    proc = _worker()
    try:
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        docs = {}
        for job, extra in (("a", []), ("b", []), ("c", ["--preprocess", "on"]), ("d", ["--t1ce", str(flair)])):
            argv = ["segment", "--flair", str(flair), "--t1ce", str(t1c), "--device", "cpu", "--progress", "jsonl",
                    "--out", str(tmp_path / f"{job}.nii.gz")] + extra
            _send(proc, {"op": "run", "id": job, "argv": argv})
            events = _until_exit(proc, job)
            assert events[-1]["rc"] == 0, events[-1]
            docs[job] = events[-2]["result"]["preprocessing"]
        assert not docs["a"].get("reused") and docs["b"]["reused"] is True
        assert docs["b"]["registration"] == docs["a"]["registration"]
        assert not docs["c"].get("reused") and docs["c"]["mode"] == "on" and not docs["d"].get("reused")
        a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{j}.nii.gz"))) for j in "ab")
        assert np.array_equal(a, b) and a.any()
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def fresh_workers():
    from BrainSpineAILib import worker_client

    worker_client.stopAll()
    yield worker_client
    worker_client.stopAll()


def _slice_node(scene, jpg, tmp_path):
    import SimpleITK as sitk

    from conftest import load_volume

    nrrd = tmp_path / (jpg.stem + ".nrrd")  # slicer-core's ITK reads no JPEG
    sitk.WriteImage(sitk.ReadImage(str(jpg)), str(nrrd))
    return load_volume(scene, nrrd, jpg.stem)


@pytest.mark.slow
def test_logic_keeps_one_warm_worker_restarts_it_after_cancel_and_death(scene, tmp_path, validation_images,
                                                                        fresh_workers):
    from BrainSpineAILib.classification_logic import ClassificationLogic
    from BrainSpineAILib.worker_client import WorkerJob

    logic = ClassificationLogic(scene)
    nodes = {c: _slice_node(scene, sorted(validation_images[c])[2], tmp_path) for c in ("glioma", "meningioma")}

    def classify(node, cold=False):
        job = logic.startBackgroundClassification(node, device="cpu")
        assert not (cold and job.poll())  # returned at once: the GUI does not wait for the worker to load
        assert isinstance(job, WorkerJob) and job.wait(600), job.errorText
        out = logic.finishBackgroundClassification(job)
        assert not job.workdir.exists()
        return job, out

    j1, o1 = classify(nodes["glioma"], cold=True)
    j2, o2 = classify(nodes["meningioma"])
    assert o1.result["predicted"] == "glioma" and o2.result["predicted"] == "meningioma"
    assert o2.heatmapNode is not None and o2.tableNode.GetNumberOfRows() == 4
    assert j1.process.pid == j2.process.pid  # the same process served both
    print(f"warm worker: first job {j1.seconds:.2f} s in the worker, second {j2.seconds:.2f} s")
    assert j1.modelsLoaded == j2.modelsLoaded == 1 and j2.seconds < j1.seconds
    worker = fresh_workers.sharedWorker("classify")
    pid = worker.process.pid

    from conftest import BRATS15, load_volume, need

    volume = load_volume(scene, need(BRATS15 / "brats_2013_pat0004_1" / "T1c_subtrMeanDivStd.nii.gz"), "t1c")

    def started(job):  # a volume job (seconds of work) once the worker has begun it
        deadline = time.monotonic() + 600
        while not job.events and not job.poll() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job.events and not job.poll(), job.errorText
        return job

    running = started(logic.startBackgroundClassification(volume, device="cpu"))
    running.cancel()
    assert running.poll() and running.process.returncode == 130 and not running.workdir.exists()
    with pytest.raises(RuntimeError, match="cancelled"):
        logic.finishBackgroundClassification(running)
    assert worker.alive() and worker.process.pid != pid  # killed and started again

    dying = started(logic.startBackgroundClassification(volume, device="cpu"))
    os.killpg(worker.process.pid, signal.SIGKILL)  # the worker dies under a job
    assert dying.wait(60)
    with pytest.raises(RuntimeError, match="stopped unexpectedly"):
        logic.finishBackgroundClassification(dying)
    j3, o3 = classify(nodes["glioma"])  # the next job gets a new worker
    assert o3.result["predicted"] == "glioma" and worker.starts == 3


def test_environment_change_gives_a_new_worker(tmp_path, fresh_workers, monkeypatch):
    """Model folders are read by the worker: a changed BRAINSPINEAI_MODEL_PATH starts a new one."""
    a = fresh_workers.sharedWorker("classify")
    monkeypatch.setenv("BRAINSPINEAI_MODEL_PATH", str(tmp_path))
    b = fresh_workers.sharedWorker("classify")
    assert a is not b and fresh_workers.sharedWorker("classify") is b
    monkeypatch.setenv("BRAINSPINEAI_WARM_WORKER", "0")
    job = fresh_workers.startJob(["classify", "--help"])
    assert type(job).__name__ == "BackgroundJob" and job.wait(120) and job.process.returncode == 0
