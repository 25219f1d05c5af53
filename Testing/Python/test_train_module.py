"""The BrainSpineAI Train module's logic with real training subprocesses on a tiny real
subset (2 classes x 12 Kaggle slices at 64 px, CPU): a run completes, reports its events in
order and registers its model; a cancelled run leaves the catalogue unchanged and no partial
files; a killed run resumes from its checkpoint; retraining makes version 2 and keeps
version 1 usable; "Add to training set" writes the right files; curves become MRML nodes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import BRATS15, KAGGLE, ROOT, need, run_cli

sys.path.insert(0, str(ROOT / "BrainSpineAITrain"))
from BrainSpineAITrainLib.training_logic import PIPELINES, TrainingLogic, buildArguments, launchCommand  # noqa: E402

TINY = {"epochs": 5, "image_size": 64, "batch_size": 32, "skull_strip_p": 0.0}  # 5 steps in all: the one-cycle bug


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "tiny2"
    for c in ("glioma", "pituitary"):
        (root / c).mkdir(parents=True)
        for f in sorted((need(KAGGLE) / c).iterdir())[:12]:
            shutil.copy(f, root / c / f.name)
    return root


def catalogue_state(home: Path):
    """Every path under models/ and every hidden temporary anywhere in the user folder."""
    models = sorted(str(p.relative_to(home)) for p in (home / "models").rglob("*")) if (home / "models").exists() else []
    temps = sorted(str(p) for p in home.rglob(".*") if p.name not in ("run.json",))
    return models, temps


def wait_for(run, predicate, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        done = run.poll()
        if predicate(run.job.events):
            return True
        if done:
            return False
        time.sleep(0.2)
    return False


def epochs_seen(events):
    return [e["epoch"] for e in events if e.get("event") == "epoch"]


@pytest.mark.slow
def test_pipeline_table_and_commands(tmp_path):
    assert set(PIPELINES) == {"classifier", "affcl", "simclr", "finetune", "sicf", "segmenter"}
    # every command line the table builds is accepted by the library's parser (sicf and
    # segmenter only where those commands exist on this branch)
    from brainspineai.cli.main import build_parser

    parser = build_parser()
    train_cmds = parser._subparsers._group_actions[0].choices["train"]._subparsers._group_actions[0].choices
    for key, pipe in PIPELINES.items():
        argv = buildArguments(key, tmp_path, tmp_path / "m", device="cpu", modelId="m")
        if pipe.command[1] not in train_cmds:
            continue
        args = parser.parse_args(argv)
        assert args.data == str(tmp_path) and args.events == "-"
        for p in pipe.params:
            if p.name == "sequences":  # a list on the command line
                assert getattr(args, p.name) == p.default.split()
                continue
            if p.default == "":  # an empty option is left out: the command's own default (None)
                assert getattr(args, p.name) is None, p.name
                continue
            assert getattr(args, p.name) == (p.default if p.kind != "float" else pytest.approx(p.default)), p.name
    assert "--init-model" in buildArguments("affcl", tmp_path, tmp_path / "m", initModel="x")
    with pytest.raises(ValueError, match="no parameter"):
        buildArguments("classifier", tmp_path, tmp_path / "m", {"nonsense": 1})
    cmd = launchCommand(["train", "affcl"], gpus=2)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:8] == ["-m", "brainspineai", "train"]
    dev = TrainingLogic.detectDevices()
    assert dev["cuda"] >= 0 and dev["source"] in ("nvidia-smi", "torch", "none")


@pytest.mark.slow
def test_run_registers_model_then_retrain_makes_version_2(tiny_set, isolated_catalogue):
    from brainspineai.catalogue import list_models, load_model

    logic = TrainingLogic()
    run = logic.startRun("classifier", tiny_set, "tiny-cls", params=TINY, device="cpu")
    assert run.wait(timeout=600) == "succeeded", run.errorText
    kinds = [e["event"] for e in run.job.events]
    assert kinds[0] == "data" and kinds[-1] == "done"
    assert epochs_seen(run.job.events) == [1, 2, 3, 4, 5]
    assert [h["epoch"] for h in run.history] == [1, 2, 3, 4, 5]
    folder = isolated_catalogue / "models" / "tiny-cls"
    assert run.modelFolder == folder and (folder / "model.json").is_file()
    assert "tiny-cls" in [c["id"] for c in list_models()]
    lines = (run.runDir / "events.jsonl").read_text().splitlines()
    assert [json.loads(ln)["event"] for ln in lines] == kinds
    assert json.loads((run.runDir / "run.json").read_text())["state"] == "succeeded"
    assert not (run.runDir / "tiny-cls").exists()  # moved, not copied
    assert run.resultText().startswith("tiny-cls (version 1): validation accuracy ")
    with pytest.raises(ValueError, match="already in the catalogue"):
        logic.startRun("classifier", tiny_set, "tiny-cls", params=TINY, device="cpu")

    # retrain on the grown dataset: version 2 from v1's weights; v1 stays usable
    extra = sorted((need(KAGGLE) / "glioma").iterdir())[40]
    shutil.copy(extra, tiny_set / "glioma" / extra.name)
    req = TrainingLogic.retrainRequest("tiny-cls", tiny_set, epochs=2, device="cpu")
    assert req["pipelineKey"] == "classifier" and req["modelId"] == "tiny-cls-v2"
    assert req["params"]["image_size"] == 64 and req["params"]["architecture"] == "resnet18-w32"
    run2 = logic.startRun(**req)
    assert run2.wait(timeout=600) == "succeeded", run2.errorText
    card2 = json.loads((isolated_catalogue / "models" / "tiny-cls-v2" / "model.json").read_text())
    card1 = json.loads((folder / "model.json").read_text())
    assert card2["version"] == 2 and card2["parent"] == "tiny-cls" and card2["lineage"] == ["tiny-cls"]
    assert card2["parent_sha256"] == card1["sha256"] and card2["sha256"] != card1["sha256"]
    assert card2["training_data"]["images_per_class"]["glioma"] == 13
    split1 = json.loads((folder / "split.json").read_text())
    split2 = json.loads((isolated_catalogue / "models" / "tiny-cls-v2" / "split.json").read_text())
    assert set(split1["validation"]) <= set(split2["validation"])  # v1's held-out images stay held out
    assert not set(split1["train"]) & set(split2["validation"])
    assert card2["training_data"]["parent_validation_kept"] == len(split1["validation"]) > 0
    v1, v2 = load_model("tiny-cls", "cpu"), load_model("tiny-cls-v2", "cpu")
    assert v1.card["version"] == 1 and v2.class_names == v1.class_names
    # v2 started from v1: its weights are far closer to v1's than to a fresh network's
    import torch

    from brainspineai.classification.networks import build_classifier

    fresh = build_classifier("resnet18-w32", 2).state_dict()
    w1, w2 = v1.network.state_dict(), v2.network.state_dict()
    key = "conv1.weight"
    assert torch.dist(w1[key], w2[key]) < 0.5 * torch.dist(fresh[key], w2[key])
    # a parent with other classes is refused, before anything is written
    r = run_cli("train", "classifier", "--data", tiny_set, "--out", isolated_catalogue / "x", "--image-size", "128",
                "--epochs", "1", "--device", "cpu", "--init-model", "brain-tumor-4class-resnet18w32")
    assert r.returncode == 2 and "has classes ['glioma', 'meningioma', 'notumor', 'pituitary']" in r.stderr
    assert not (isolated_catalogue / "x").exists()


@pytest.mark.slow
def test_cancel_midway_leaves_catalogue_unchanged_and_resume_finishes(tiny_set, isolated_catalogue):
    logic = TrainingLogic()
    before = catalogue_state(isolated_catalogue)
    run = logic.startRun("classifier", tiny_set, "tiny-cancel", params=dict(TINY, epochs=12), device="cpu")
    assert wait_for(run, lambda ev: len(epochs_seen(ev)) >= 1), run.errorText
    run.cancel()
    assert run.state == "cancelled" and run.job.process.poll() is not None
    assert catalogue_state(isolated_catalogue) == before
    assert not (run.runDir / "tiny-cancel").exists()
    assert (run.runDir / "tiny-cancel.work" / "last.pt").is_file()  # kept for Resume
    assert json.loads((run.runDir / "run.json").read_text())["state"] == "cancelled"
    assert [r["name"] for r in logic.listRuns()] == ["tiny-cancel"]
    resumed = logic.resumeRun("tiny-cancel")
    assert resumed.wait(timeout=600) == "succeeded", resumed.errorText
    assert resumed.job.events[1]["event"] == "resume"
    card = json.loads((isolated_catalogue / "models" / "tiny-cancel" / "model.json").read_text())
    assert [h["epoch"] for h in card["training"]["history"]] == list(range(1, 13))
    # cancel with discard: the run folder goes too, the catalogue is as it was
    before = catalogue_state(isolated_catalogue)
    other = logic.startRun("classifier", tiny_set, "tiny-discard", params=TINY, device="cpu")
    other.cancel(discard=True)
    assert not other.runDir.exists() and catalogue_state(isolated_catalogue) == before


def test_killed_run_resumes_from_checkpoint(tiny_set, isolated_catalogue):
    logic = TrainingLogic()
    run = logic.startRun("classifier", tiny_set, "tiny-resume", params=dict(TINY, epochs=8), device="cpu")
    assert wait_for(run, lambda ev: len(epochs_seen(ev)) >= 2), run.errorText
    os.killpg(run.job.process.pid, signal.SIGKILL)  # a crash: no cancel, no cleanup
    run.wait(timeout=60)
    assert run.state == "failed"
    done_before = max(epochs_seen(run.job.events))
    assert not (isolated_catalogue / "models" / "tiny-resume").exists()
    resumed = logic.resumeRun("tiny-resume")
    assert resumed.wait(timeout=600) == "succeeded", resumed.errorText
    ev = resumed.job.events
    assert ev[1]["event"] == "resume" and ev[1]["epoch"] >= 2
    assert epochs_seen(ev) == list(range(ev[1]["epoch"] + 1, 9))
    assert ev[1]["epoch"] >= done_before - 1
    card = json.loads((isolated_catalogue / "models" / "tiny-resume" / "model.json").read_text())
    assert [h["epoch"] for h in card["training"]["history"]] == list(range(1, 9))


def test_curves_become_table_and_plot_nodes():
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    scene = slicer.vtkMRMLScene()
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "curves")
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "chart")
    history = [{"epoch": 1, "loss": 0.9, "val_accuracy": 0.5}, {"epoch": 2, "loss": 0.6, "val_accuracy": 0.75}]
    TrainingLogic.updateCurves(history, table, chart, scene)
    assert table.GetNumberOfRows() == 2 and table.GetNumberOfColumns() == 3
    assert table.GetTable().GetColumnByName("val_accuracy").GetValue(1) == pytest.approx(0.75)
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    TrainingLogic.updateCurves(history + [{"epoch": 3, "loss": 0.5, "val_accuracy": 0.8}], table, chart, scene)
    assert table.GetNumberOfRows() == 3 and chart.GetNumberOfPlotSeriesNodes() == 2
    assert chart.GetNthPlotSeriesNode(0).GetYColumnName() in ("loss", "val_accuracy")


def test_add_to_training_set_writes_slice_and_volume(tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    from BrainSpineAILib import mrml_utils
    from BrainSpineAILib.training_set import addToTrainingSet, datasetClasses

    scene = slicer.vtkMRMLScene()
    vlogic = slicer.vtkSlicerVolumesLogic()
    vlogic.SetMRMLScene(scene)
    jpg = sorted((need(KAGGLE) / "meningioma").iterdir())[0]
    nrrd = tmp_path / "slice.nrrd"  # slicer-core's ITK has no JPEG reader
    sitk.WriteImage(sitk.ReadImage(str(jpg)), str(nrrd))
    node = vlogic.AddArchetypeVolume(str(nrrd), "Tr-me 0000")
    ds = tmp_path / "ds"
    first = addToTrainingSet(node, ds, "meningioma")
    second = addToTrainingSet(node, ds, "meningioma")
    assert first == ds / "meningioma" / "Tr-me_0000.png" and second.name == "Tr-me_0000-2.png"
    original = sitk.GetArrayFromImage(sitk.ReadImage(str(jpg))).astype(float)
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(first)))
    assert saved.dtype == np.uint8 and saved.shape == original.shape
    stretched = np.round((original - original.min()) / (original.max() - original.min()) * 255)
    assert np.array_equal(saved, stretched.astype(np.uint8))
    vol = vlogic.AddArchetypeVolume(str(need(BRATS15) / "brats_2013_pat0004_1" / "T1c_subtrMeanDivStd.nii.gz"), "t1c")
    out = addToTrainingSet(vol, ds, "glioma")
    assert out.name == "t1c.nii.gz"
    ref = sitk.ReadImage(str(BRATS15 / "brats_2013_pat0004_1" / "T1c_subtrMeanDivStd.nii.gz"))
    back = sitk.ReadImage(str(out))
    assert back.GetSize() == ref.GetSize()
    assert np.allclose(back.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    assert np.allclose(back.GetDirection(), ref.GetDirection(), atol=1e-6)
    assert np.allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(ref))
    from BrainSpineAILib.training_set import sliceIndexAt

    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetOrientationToAxial()
    ijk_to_ras = mrml_utils.ijk_to_ras_array(vol)
    center = ijk_to_ras @ np.array([120.0, 120.0, 77.0, 1.0])
    red.JumpSliceByCentering(*center[:3])
    assert sliceIndexAt(vol, red) == 77
    k = addToTrainingSet(vol, ds, "glioma", sliceIndex=sliceIndexAt(vol, red))
    assert k.name == "t1c_k77.png"
    plane = sitk.GetArrayFromImage(ref)[77].astype(float)
    want = np.round((plane - plane.min()) / (plane.max() - plane.min()) * 255).astype(np.uint8)
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(k))), want)
    assert datasetClasses(ds) == ["glioma", "meningioma"]
    assert not [p for p in ds.rglob(".*")]  # no temporaries left
    with pytest.raises(ValueError, match="class"):
        addToTrainingSet(node, ds, "../evil")
    from brainspineai.datasets import summarise

    assert summarise(ds)["classes"] == {"glioma": 2, "meningioma": 2}


@pytest.mark.slow
def test_contrastive_pipelines_run_and_retrain(tiny_set, isolated_catalogue):
    """AFF-CL, SimCLR and fine-tuning (from the SimCLR encoder) through the same logic: each
    run registers its model; retraining AFF-CL and SimCLR makes version 2 from their weights
    with the same network settings (fine-tuning: the retraining request only)."""
    from brainspineai.catalogue import load_model

    logic = TrainingLogic()
    small = {"epochs": 2, "image_size": 64, "batch_size": 16, "backbone": "resnet10-w32"}
    runs = [("affcl", "tiny-affcl", dict(small, queue_size=32, skull_strip_p=0.0, single_branch=True)),
            ("simclr", "tiny-simclr", dict(small)),
            ("finetune", "tiny-ft", dict(small, encoder="tiny-simclr", skull_strip_p=0.0))]
    for key, model_id, params in runs:
        run = logic.startRun(key, tiny_set, model_id, params=params, device="cpu")
        assert run.wait(timeout=600) == "succeeded", (key, run.errorText)
        assert [h["epoch"] for h in run.history] == [1, 2]
        req = TrainingLogic.retrainRequest(model_id, tiny_set, epochs=1, device="cpu")
        assert req["pipelineKey"] == key and req["modelId"] == f"{model_id}-v2"
        assert req["params"]["backbone"] == "resnet10-w32" and req["params"]["image_size"] == 64
        if key == "affcl":
            assert req["params"]["single_branch"] is True
        if key == "finetune":  # same --init-model path as the others; spare the CPU a run
            assert req["params"]["head"] == "linear" and req["initModel"].endswith("tiny-ft")
            continue
        v2 = logic.startRun(**req)
        assert v2.wait(timeout=600) == "succeeded", (key, v2.errorText)
        task = "encoder-2d" if key == "simclr" else "classification-2d"
        new, old = load_model(f"{model_id}-v2", "cpu", task=task), load_model(model_id, "cpu", task=task)
        assert new.card["version"] == 2 and new.card["parent"] == model_id and old.card["version"] == 1


def test_two_processes_train_with_ddp_under_torchrun(tiny_set, isolated_catalogue):
    """The several-GPU launch (torchrun + Fabric DDP), here with 2 CPU processes (gloo)."""
    run = TrainingLogic().startRun("simclr", tiny_set, "ddp-simclr", {"epochs": 2, "image_size": 64, "batch_size": 8,
                                                                      "backbone": "resnet10-w32"}, device="cpu", gpus=2)
    assert "torch.distributed.run" in run.job.command and "--nproc_per_node=2" in run.job.command
    assert run.wait(timeout=600) == "succeeded", run.errorText
    assert [e["event"] for e in run.job.events] == ["data", "epoch", "epoch", "done"]  # process 0 only
    card = json.loads((run.modelFolder / "model.json").read_text())
    assert card["training"]["processes"] == 2 and card["id"] == "ddp-simclr"


@pytest.mark.slow
def test_segmenter_pipeline_runs_and_retrains(tmp_path, isolated_catalogue):
    """The 3D segmenter through the same logic (one real BraTS case, tiny patches), then its
    retraining on the same folder from its weights: version 2, parent recorded."""
    pytest.importorskip("brainspineai.segmentation.training", reason="the segmentation library is not on this branch")
    data = tmp_path / "cases"
    data.mkdir()
    (data / "brats_2013_pat0001_1").symlink_to(need(BRATS15 / "brats_2013_pat0001_1"))
    assert TrainingLogic.summarizeDataset(data)["n_cases"] == 1
    logic = TrainingLogic()
    params = {"epochs": 1, "batch_size": 2, "samples_per_epoch": 2, "patch_size": 16, "spacing": 4.0, "val_cases": 0}
    run = logic.startRun("segmenter", data, "tiny-seg", params=params, device="cpu")
    assert run.wait(timeout=600) == "succeeded", run.errorText
    assert any(e.get("event") == "epoch" for e in run.job.events)
    req = TrainingLogic.retrainRequest("tiny-seg", data, epochs=1, device="cpu")
    assert req["pipelineKey"] == "segmenter" and req["modelId"] == "tiny-seg-v2"
    assert req["params"]["patch_size"] == 16 and req["params"]["spacing"] == 4.0 and req["params"]["val_cases"] == 0
    req["params"]["samples_per_epoch"] = 2
    v2 = logic.startRun(**req)
    assert v2.wait(timeout=600) == "succeeded", v2.errorText
    card = json.loads((isolated_catalogue / "models" / "tiny-seg-v2" / "model.json").read_text())
    assert card["task"] == "segmentation-3d" and card["version"] == 2 and card["parent"] == "tiny-seg"


@pytest.mark.slow
def test_sicf_pipeline_runs_and_retrains(tiny_set, isolated_catalogue):
    """SICF through the same logic (brain slices: full-image ROI; VGG16 from a seeded random
    initialisation, nothing downloaded); it has no checkpoints. Retraining it runs
    ``train sicf --init-model`` with the parent's recipe: version 2, same codebook and mask."""
    pytest.importorskip("brainspineai.sicf.pipeline", reason="the SICF library is not on this branch")
    logic = TrainingLogic()
    params = {"roi": "full", "image_size": 64, "words": 32, "population": 6, "iterations": 1, "val_fraction": 0.4,
              "seed": 3}
    run = logic.startRun("sicf", tiny_set, "tiny-sicf", params=params)
    assert run.wait(timeout=600) == "succeeded", run.errorText
    card = json.loads((run.modelFolder / "model.json").read_text())
    assert card["id"] == "tiny-sicf" and card["task"] == "sicf-2d"
    req = TrainingLogic.retrainRequest("tiny-sicf", tiny_set, epochs=3, device="cpu")
    assert req["pipelineKey"] == "sicf" and req["modelId"] == "tiny-sicf-v2" and "epochs" not in req["params"]
    assert req["params"] == {"roi": "full", "image_size": 64, "words": 32, "population": 6, "iterations": 1,
                             "penalty": 0.01, "val_fraction": 0.4, "seed": 3}
    v2 = logic.startRun(**req)
    assert "--init-model" in v2.request["arguments"]
    assert v2.wait(timeout=600) == "succeeded", v2.errorText
    folder2 = isolated_catalogue / "models" / "tiny-sicf-v2"
    card2 = json.loads((folder2 / "model.json").read_text())
    assert card2["version"] == 2 and card2["parent"] == "tiny-sicf" and card2["lineage"] == ["tiny-sicf"]
    assert card2["parent_sha256"] == card["sha256"]
    for name in ("codebook.npy", "feature_mask.npy"):
        assert np.array_equal(np.load(folder2 / name), np.load(run.modelFolder / name))
    assert json.loads((run.modelFolder / "model.json").read_text()) == card  # the parent is untouched


# --- issue 14: what the Slicer panels rely on, checked on a real MRML scene ------------------------


def test_empty_path_field_is_no_folder(tmp_path, monkeypatch):
    """ctkPathLineEdit.currentPath is "" when empty; Path("") is "." (the working directory),
    whose sub-folders must not become training classes nor a dataset."""
    from BrainSpineAILib.training_set import addToTrainingSet, chosenFolder, datasetClasses

    for name in ("Desktop", "Documents"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    assert datasetClasses(".") == ["Desktop", "Documents"]  # a real folder still lists its classes
    for empty in ("", "  ", None):
        assert chosenFolder(empty) is None
        assert datasetClasses(empty) == []
    with pytest.raises(ValueError, match="dataset folder"):
        addToTrainingSet(object.__new__(_FakeVolume), "", "glioma")
    with pytest.raises(ValueError, match="dataset folder"):
        TrainingLogic().startRun("classifier", "", "empty-path", device="cpu")
    assert not (tmp_path / "glioma").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["Desktop", "Documents"]


class _FakeVolume:
    def GetImageData(self):
        return object()


def _volume(scene, arr, ijk_to_ras):
    """A scalar volume node holding ``arr`` (K, J, I) with this IJK-to-RAS matrix."""
    import vtk

    from BrainSpineAILib import mrml_utils

    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "v")
    mrml_utils.update_volume_node_from_array(node, arr)
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(ijk_to_ras[r][c]))
    node.SetIJKToRASMatrix(m)
    return node


def _slice_xy(slice_node, ras):
    """Slice coordinates (x, y, z) in mm of a RAS point: x to the right, y up on the screen."""
    m = np.array([[slice_node.GetSliceToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    return (np.linalg.inv(m) @ np.append(ras, 1.0))[:3]


@pytest.mark.parametrize("orientation", ["Axial", "Sagittal", "Coronal"])
@pytest.mark.parametrize("stored", ["lps-axial", "sagittal-acquired", "flipped-coronal"])
def test_shown_slice_follows_the_view_and_the_volume_geometry(orientation, stored):
    """"Current slice only": the voxel plane under a view of any orientation, for volumes
    stored in any orientation, oriented as the view shows it (pixel (r, c) lies on the
    view's plane, x grows with c and y falls with r)."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    from BrainSpineAILib import mrml_utils
    from BrainSpineAILib.training_set import viewPlaneAt

    spacing = np.diag([1.2, 0.9, 2.5])
    perm = {"lps-axial": np.diag([-1.0, -1.0, 1.0]),  # I to the left, J posterior, K superior
            "sagittal-acquired": np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 1.0, 0]]),  # I anterior, J superior, K right
            "flipped-coronal": np.array([[1.0, 0, 0], [0, 0, -1.0], [0, -1.0, 0]])}[stored]  # J inferior, K posterior
    m = np.eye(4)
    m[:3, :3] = perm @ spacing
    m[:3, 3] = [-20.0, 15.0, -30.0]
    arr = np.arange(11 * 13 * 17, dtype=np.float32).reshape(11, 13, 17)  # (K, J, I): every voxel its own value
    scene = slicer.vtkMRMLScene()
    node = _volume(scene, arr, m)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)  # as Slicer's application logic does
    view = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    assert getattr(view, f"SetOrientationTo{orientation}")() and view.GetOrientationString() == orientation
    centre = m @ np.array([8.0, 6.0, 5.0, 1.0])  # the voxel (i, j, k) = (8, 6, 5)
    view.JumpSliceByCentering(*centre[:3])
    plane = viewPlaneAt(node, view)
    assert plane.obliqueDegrees == pytest.approx(0.0, abs=1e-6)
    assert plane.index == (8, 6, 5)[plane.axis]
    pixels = plane.extract(arr)
    assert pixels.ndim == 2 and pixels.size == arr.size // arr.shape[2 - plane.axis]
    ijk_of = {int(v): np.array([v % 17, (v // 17) % 13, v // (17 * 13)], float) for v in arr.ravel()}
    xyz = np.array([[_slice_xy(view, (m @ np.append(ijk_of[int(v)], 1.0))[:3]) for v in row] for row in pixels])
    assert np.allclose(xyz[..., 2], 0.0, atol=1e-6)  # every pixel on the view's plane
    assert (np.diff(xyz[..., 0], axis=1) > 0).all()  # columns run to the right
    assert (np.diff(xyz[..., 1], axis=0) < 0).all()  # rows run down the screen
    # the K-only rule this replaces is right for a view across K only
    assert (plane.axis == 2) == (orientation == {"lps-axial": "Axial", "sagittal-acquired": "Sagittal",
                                                  "flipped-coronal": "Coronal"}[stored])
    assert mrml_utils.ijk_to_ras_array(node) == pytest.approx(m)


def test_shown_slice_of_a_real_volume_and_oblique_views(tmp_path):
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    from BrainSpineAILib import mrml_utils
    from BrainSpineAILib.training_set import addToTrainingSet, viewPlaneAt

    scene = slicer.vtkMRMLScene()
    vlogic = slicer.vtkSlicerVolumesLogic()
    vlogic.SetMRMLScene(scene)
    path = need(BRATS15) / "brats_2013_pat0004_1" / "T1c_subtrMeanDivStd.nii.gz"
    vol = vlogic.AddArchetypeVolume(str(path), "t1c")
    m = mrml_utils.ijk_to_ras_array(vol)
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    view = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    assert view.SetOrientationToSagittal()
    view.JumpSliceByCentering(*(m @ np.array([100.0, 120.0, 77.0, 1.0]))[:3])
    plane = viewPlaneAt(vol, view)
    assert (plane.axis, plane.index) == (0, 100)
    out = addToTrainingSet(vol, tmp_path, "glioma", plane=plane)
    assert out.name == "t1c_i100.png"
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    want = plane.extract(ref)
    want = np.round((want - want.min()) / (want.max() - want.min()) * 255).astype(np.uint8)
    assert saved.shape == (155, 240) and np.array_equal(saved, want)
    # superior is up on a sagittal view: the top row is the highest K
    assert plane.rowAxis == 2 and plane.flipRows == (m[2, 2] > 0)
    # 30 degrees off every voxel plane: refused; 10 degrees: the nearest plane
    for degrees, ok in ((30.0, False), (10.0, True)):
        view.SetOrientationToAxial()
        t = np.eye(4)
        a = np.radians(degrees)
        t[1:3, 1:3] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
        s2r = view.GetSliceToRAS()
        rotated = t @ np.array([[s2r.GetElement(r, c) for c in range(4)] for r in range(4)])
        for r in range(4):
            for c in range(4):
                s2r.SetElement(r, c, rotated[r, c])
        view.UpdateMatrices()
        if ok:
            assert viewPlaneAt(vol, view).axis == 2
        else:
            with pytest.raises(ValueError, match="rotate the view"):
                viewPlaneAt(vol, view)


def test_train_plot_has_its_own_view_that_classify_charts_do_not_replace():
    """The curves are shown in the Train module's own plot view node (not the layout's), which
    does not take charts the layout propagates (Classify's ShowChartInLayout)."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    scene = slicer.vtkMRMLScene()
    app = slicer.vtkMRMLApplicationLogic()
    app.SetMRMLScene(scene)
    layout_view = scene.AddNewNodeByClass("vtkMRMLPlotViewNode", "PlotView1")
    table, curves = TrainingLogic.curveNodes("m", scene)
    view = TrainingLogic.plotViewNode(curves, scene)
    assert view is not layout_view and not view.GetDoPropagatePlotChartSelection()
    assert view.GetPlotChartNodeID() == curves.GetID()
    assert TrainingLogic.plotViewNode(curves, scene) is view  # one per scene, found again
    per_slice = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "t1c per-slice probabilities")
    app.GetSelectionNode().SetActivePlotChartID(per_slice.GetID())  # what ShowChartInLayout does
    app.PropagatePlotChartSelection()
    assert layout_view.GetPlotChartNodeID() == per_slice.GetID()
    assert view.GetPlotChartNodeID() == curves.GetID()


def test_run_json_records_its_process_a_live_run_is_never_resumed(tiny_set, isolated_catalogue):
    """Two processes never train into one run folder: a live run (its pid in run.json) is not
    offered for Resume and resumeRun refuses it; once its process is gone (killed, not
    reaped: a zombie) it shows as interrupted and can be resumed."""
    from BrainSpineAITrainLib.training_logic import canResume, processAlive, runState

    logic = TrainingLogic()
    run = logic.startRun("classifier", tiny_set, "tiny-live", params=dict(TINY, epochs=50), device="cpu")
    try:
        doc = json.loads((run.runDir / "run.json").read_text())
        assert doc["state"] == "running" and doc["pid"] == run.job.process.pid and doc["host"]
        (row,) = [r for r in logic.listRuns() if r["name"] == "tiny-live"]
        assert row["state"] == "running" and row["resumable"] is False
        with pytest.raises(ValueError, match="still running"):
            logic.resumeRun("tiny-live")
        with pytest.raises(ValueError, match="did not end"):
            logic.startRun("classifier", tiny_set, "other-model", params=TINY, device="cpu", runName="tiny-live")
    finally:
        os.killpg(run.job.process.pid, signal.SIGKILL)  # a crash: run.json still says running
    time.sleep(0.5)
    assert not processAlive(doc["pid"], doc.get("pid_started"))  # a zombie is not alive
    assert json.loads((run.runDir / "run.json").read_text())["state"] == "running"
    (row,) = [r for r in logic.listRuns() if r["name"] == "tiny-live"]
    assert row["state"] == "interrupted" and row["recorded_state"] == "running" and row["resumable"] is True
    run.wait(timeout=60)
    # recorded states: the file's word, unless the process proves otherwise
    me = {"state": "running", "pid": os.getpid(), "pipeline": "classifier"}
    assert runState(me) == "running" and not canResume(me)
    assert runState(dict(me, pid_started="1")) == "interrupted"  # same pid, another process
    assert runState(dict(me, host="some-other-machine", pid=1)) == "running"  # cannot be checked here
    assert runState({"state": "running", "pipeline": "classifier"}) == "interrupted"  # no pid: an old run
    assert canResume({"state": "cancelled", "pipeline": "classifier"})
    assert not canResume({"state": "cancelled", "pipeline": "sicf"})  # no checkpoints
    assert not canResume({"state": "succeeded", "pipeline": "classifier"})


def test_shown_slice_applies_the_volume_parent_transform():
    """A volume under a linear transform is shown moved: the plane under the view is picked
    in world coordinates; a non-linear transform is refused."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    import vtk

    from BrainSpineAILib.training_set import viewPlaneAt

    scene = slicer.vtkMRMLScene()
    node = _volume(scene, np.zeros((20, 8, 8), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    view = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    assert view.SetOrientationToAxial()
    view.JumpSliceByCentering(3.0, 3.0, 20.0)  # K = 10 without the transform
    assert viewPlaneAt(node, view).index == 10
    shift = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = vtk.vtkMatrix4x4()
    m.SetElement(2, 3, 6.0)  # 6 mm superior: 3 slices
    shift.SetMatrixTransformToParent(m)
    node.SetAndObserveTransformNodeID(shift.GetID())
    assert viewPlaneAt(node, view).index == 7
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(ValueError, match="non-linear"):
        viewPlaneAt(node, view)
