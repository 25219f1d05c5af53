"""Issue 19 on the command line: ``--version``, defaults in ``--help``, ``classify`` of several
inputs (folder, ``--json-dir``, summary CSV, model loaded once, only the classification
imports), ``segment --cases``, and the progress display."""
from __future__ import annotations

import csv
import io
import json
import os

import pytest

from conftest import BRATS15, need, run_cli


def test_version_and_help_name_defaults():
    from brainspineai import __version__

    r = run_cli("--version", process=True)  # the real entry point
    assert r.returncode == 0 and r.stdout.strip() == f"brainspineai {__version__}"
    r = run_cli("classify", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "(default: text)" in text and "(default: auto)" in text  # --progress and --device (no help text of its own)
    r = run_cli("train", "segmenter", "--help")
    assert "(default: 30)" in " ".join(r.stdout.split())  # --epochs
    for command in ("segment", "classify", "preprocess"):  # help that names its own default is not repeated
        text = " ".join(run_cli(command, "--help").stdout.split())
        assert "(default: off) (default" not in text and "(default: auto) (default" not in text
        assert "range) (default: [400.0, 2500.0])" not in text


@pytest.mark.slow
def test_in_process_cli_sees_what_a_process_sees(tmp_path, validation_images):
    """The suite's in-process ``run_cli`` against ``python -m brainspineai`` on the same calls:
    a bad input (one line, exit 2), and a classification whose model id is shadowed by a folder
    in ``BRAINSPINEAI_MODEL_PATH`` (a warning through logging, which a fresh process prints with
    logging's last-resort handler)."""
    import shutil

    from brainspineai.catalogue import DEFAULT_MODEL_ID, resolve_model

    jpg = tmp_path / "not-an-image.jpg"
    jpg.write_bytes(b"this is not a JPEG")
    shadow = tmp_path / "models"
    shutil.copytree(resolve_model(DEFAULT_MODEL_ID), shadow / DEFAULT_MODEL_ID)
    env = {"BRAINSPINEAI_MODEL_PATH": str(shadow)}
    good = validation_images["glioma"][0]
    for args in (("classify", jpg, "--device", "cpu"), ("classify", good, "--model", DEFAULT_MODEL_ID, "--device", "cpu")):
        here, there = run_cli(*args, env=env), run_cli(*args, env=env, process=True)
        assert (here.returncode, here.stdout, here.stderr) == (there.returncode, there.stdout, there.stderr), args
    assert here.returncode == 0 and "is shadowed" in here.stderr and "glioma" in here.stdout
    assert run_cli(*args, env=env).stderr == here.stderr  # warned again: once-per-process state starts anew
    bad = run_cli("classify", jpg, "--device", "cpu")
    assert bad.returncode == 2 and bad.stderr.startswith("brainspineai: error: ") and bad.stderr.count("\n") == 1
    assert "BRAINSPINEAI_MODEL_PATH" not in os.environ  # the call's environment is undone


def test_parser_backbone_names_are_the_library_s():
    from brainspineai.classification.backbones import BACKBONES
    from brainspineai.cli.common import BACKBONE_NAMES

    assert tuple(BACKBONE_NAMES) == tuple(BACKBONES)


def _slices(tmp_path, validation_images):
    folder = tmp_path / "slices"
    folder.mkdir()
    truth = {}
    for name in ("glioma", "pituitary", "notumor"):
        for src in sorted(validation_images[name])[:2]:
            (folder / src.name).symlink_to(src)
            truth[src.name] = name
    (folder / "notes.txt").write_text("not an image\n")  # ignored: not an image suffix
    return folder, truth


@pytest.mark.slow
def test_folder_of_slices_one_model_load_json_dir_and_csv(tmp_path, validation_images):
    """Six held-out slices in one call: one JSON per slice and summary.csv, every prediction
    right, progress as JSON lines; the run imports neither open_clip nor the segmentation code."""
    folder, truth = _slices(tmp_path, validation_images)
    out = tmp_path / "out"
    r = run_cli("classify", folder, "--device", "cpu", "--json-dir", out, "--progress", "jsonl",
                env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "brainspineai.classification.inference" in imported  # the import trace is really there
    assert not [m for m in imported if m.startswith(("open_clip", "brainspineai.segmentation"))]
    events = [json.loads(line) for line in r.stdout.splitlines()]
    progress = [e["fraction"] for e in events if e["event"] == "progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    done = events[-1]
    assert done["event"] == "done" and len(done["result"]["results"]) == 6
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted([n.rsplit(".", 1)[0] + ".json" for n in truth] + ["summary.csv"])
    for name, cls in truth.items():
        doc = json.loads((out / (name.rsplit(".", 1)[0] + ".json")).read_text())
        assert doc["predicted"] == cls and doc["input"].endswith(name) and doc["seconds"] > 0
        assert sum(doc["probabilities"]) == pytest.approx(1.0, abs=1e-5)
    rows = list(csv.DictReader(io.StringIO((out / "summary.csv").read_text())))
    assert len(rows) == 6 and {os.path.basename(r["input"]): r["predicted"] for r in rows} == truth
    assert all(float(r["p_predicted"]) == pytest.approx(float(r["p_" + r["predicted"]])) for r in rows)


def test_batch_refusals_write_nothing(tmp_path, validation_images):
    folder, _ = _slices(tmp_path, validation_images)
    r = run_cli("classify", folder, "--json", tmp_path / "r.json")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "use --json-dir" in r.stderr and not (tmp_path / "r.json").exists()
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a truncated PNG among good slices
    r = run_cli("classify", folder, "--device", "cpu", "--json-dir", tmp_path / "out")
    assert r.returncode == 2 and r.stderr.startswith("brainspineai: error: ") and r.stderr.count("\n") == 1
    assert "zz_broken.png" in r.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_terminal_bar_only_on_a_terminal():
    from brainspineai.cli.progress import TerminalBar, make_progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert type(make_progress("text", io.StringIO())).__name__ == "_Null"
    assert isinstance(make_progress("text", Tty()), TerminalBar)
    tty = Tty()
    bar = TerminalBar(tty, delay=0.0)
    bar(0.5, "sliding-window inference")
    assert "[" + "#" * 15 + "." * 15 + "]  50%  sliding-window inference" in tty.getvalue()
    bar.close()
    assert tty.getvalue().endswith("\r" + " " * 100 + "\r")
    quiet = Tty()
    slow = TerminalBar(quiet, delay=60.0)  # a command under its delay draws nothing
    slow(0.5, "x")
    slow.close()
    assert quiet.getvalue() == ""


@pytest.fixture(scope="module")
def tiny_seg(tmp_path_factory):
    """A small CLIP-guided U-Net (4 mm voxels) trained for one short epoch on one real case."""
    from brainspineai.segmentation.training import SegTrainConfig, train_segmenter

    data = tmp_path_factory.mktemp("segdata")
    (data / "brats_2013_pat0001_1").symlink_to(need(BRATS15 / "brats_2013_pat0001_1"))
    cfg = SegTrainConfig(epochs=1, batch_size=2, samples_per_epoch=2, patch_size=16, spacing=4.0, val_cases=0,
                         channels=(4, 8, 16, 32), device="cpu", model_id="tiny-seg-fast")
    return train_segmenter(data, tmp_path_factory.mktemp("segmodel") / "tiny-seg-fast", cfg)


@pytest.mark.slow
def test_segment_a_folder_of_cases(tmp_path, tiny_seg):
    """Two real cases in one call: a labelmap on each case's FLAIR grid, its JSON and summary.csv."""
    import SimpleITK as sitk

    cases = tmp_path / "cases"
    cases.mkdir()
    for pid in ("brats_2013_pat0002_1", "brats_2013_pat0003_1"):
        (cases / pid).symlink_to(need(BRATS15 / pid))
    out = tmp_path / "seg"
    r = run_cli("segment", "--cases", cases, "--out", out, "--model", tiny_seg, "--device", "cpu", "--overlap", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0] == "case,seconds,WT_ml,TC_ml,ET_ml" and len(rows) == 3
    for pid in ("brats_2013_pat0002_1", "brats_2013_pat0003_1"):
        lab = sitk.ReadImage(str(out / f"{pid}.nii.gz"))
        ref = sitk.ReadImage(str(BRATS15 / pid / "Flair_subtrMeanDivStd.nii.gz"))
        assert lab.GetSize() == ref.GetSize() and lab.GetSpacing() == pytest.approx(ref.GetSpacing())
        doc = json.loads((out / f"{pid}.json").read_text())
        voxels = int((sitk.GetArrayFromImage(lab) > 0).sum())
        assert doc["regions"]["WT"]["voxels"] == voxels and doc["model"] == "tiny-seg-fast"
    r = run_cli("segment", "--cases", cases, "--out", out / "summary.csv", "--model", tiny_seg)
    assert r.returncode == 2 and r.stderr.count("\n") == 1  # --out must be a folder with --cases


def test_bad_input_is_said_before_the_model_is_loaded(tmp_path):
    """A corrupt input to ``classify`` and a missing sequence for ``segment`` are refused from the
    file and the model card alone, before the network (and torch / MONAI) is loaded: the error
    names the input even when the model would also fail to load, and no heavy import happened."""
    bad = tmp_path / "g.nii.gz"
    bad.write_bytes(b"not an image")
    probe = ("import sys\n"
             "from brainspineai.cli.main import main\n"
             "rc = main(sys.argv[1:]); print('heavy:', sorted(m for m in ('torch', 'monai') if m in sys.modules)); "
             "sys.exit(rc)")
    import subprocess
    import sys

    from conftest import LIB_PARENT

    env = dict(os.environ, PYTHONPATH=str(LIB_PARENT))
    r = subprocess.run([sys.executable, "-c", probe, "classify", str(bad), "--model", "no-such-model"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "g.nii.gz: not a readable image" in r.stderr and "heavy: []" in r.stdout
    flair = need(BRATS15) / "brats_2013_pat0003_1" / "Flair_subtrMeanDivStd.nii.gz"
    r = subprocess.run([sys.executable, "-c", probe, "segment", "--flair", str(flair), "--out", str(tmp_path / "s.nii.gz")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "missing sequence t1ce (the model needs flair, t1ce)" in r.stderr
    assert "heavy: []" in r.stdout and not (tmp_path / "s.nii.gz").exists()
    # sequences that do not overlap in space: the same line as the stage that would refuse them later
    import SimpleITK as sitk

    t1c = sitk.ReadImage(str(flair.parent / "T1c_subtrMeanDivStd.nii.gz"))
    t1c.SetOrigin([t1c.GetOrigin()[0] + 500.0] + list(t1c.GetOrigin()[1:]))
    sitk.WriteImage(t1c, str(tmp_path / "t1c_moved.nii.gz"))
    for extra, said in ((["--preprocess", "off"], "t1ce covers only 0% of the physical extent of the reference flair"),
                        ([], "t1ce and flair do not overlap in space")):
        r = subprocess.run([sys.executable, "-c", probe, "segment", "--flair", str(flair), "--t1ce",
                            str(tmp_path / "t1c_moved.nii.gz"), "--out", str(tmp_path / "s.nii.gz"), *extra],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 2 and said in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert "heavy: []" in r.stdout and not (tmp_path / "s.nii.gz").exists()
