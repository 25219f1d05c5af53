"""Prognosis of lower-grade glioma on the real TCGA-LGG patients: radiomics are deterministic
and resolution-independent, a model folder reloads to identical risks, a missing sequence is
handled, the clinical CSV is validated, and bad input gives one line and exit 2."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from conftest import DATA, need, run_cli

pytest.importorskip("radiomics", reason="pyradiomics is not installed")
pytest.importorskip("lifelines", reason="lifelines is not installed")

LGG = DATA / "volumes" / "tcga-lgg-flair"
# three patients with all sequences, two with FLAIR only, one with T1 + FLAIR; deaths among them
FEW = ["TCGA_CS_4941", "TCGA_CS_4942", "TCGA_CS_4944", "TCGA_CS_5393", "TCGA_CS_5395", "TCGA_CS_5396",
       "TCGA_CS_6186", "TCGA_CS_6188", "TCGA_CS_6665", "TCGA_CS_6668"]


@pytest.fixture(scope="module")
def lgg():
    return need(LGG)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("radiomics-cache")


def _flair_only_patient(lgg):
    from brainspineai.prognosis.data import read_clinical

    rows = read_clinical(lgg / "clinical.csv", need_age=False)
    return next(r for r in rows if r.extra.get("sequences") == "flair" and r.age is not None)


def _small_cohort(lgg, tmp_path, extra_rows=0):
    """A clinical CSV of FEW (+ some FLAIR-only patients) beside links to their folders."""
    from brainspineai.prognosis.data import read_clinical

    rows = list(csv.DictReader(open(lgg / "clinical.csv", newline="")))
    flair_only = [r.patient for r in read_clinical(lgg / "clinical.csv", need_age=False)
                  if r.extra.get("sequences") == "flair"][:extra_rows]
    keep = [r for r in rows if r["patient"] in FEW + flair_only]
    data = tmp_path / "data"
    data.mkdir()
    for r in keep:
        (data / r["patient"]).symlink_to(lgg / r["patient"])
    with open(data / "clinical.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    return data


def test_features_are_deterministic_and_cached(lgg, cache):
    from brainspineai.prognosis.features import case_features

    a = case_features(lgg / "TCGA_CS_4941")
    b = case_features(lgg / "TCGA_CS_4941", cache_dir=cache)
    c = case_features(lgg / "TCGA_CS_4941", cache_dir=cache)  # read back from the cache
    assert len(a["radiomics"]) > 50 and a["missing"] == []
    assert a == b == c
    assert list(cache.iterdir()), "the features were cached"
    assert a["radiomics"]["original_shape_VoxelVolume"] > 100


def test_256px_input_gives_the_same_grid_and_close_features(lgg, tmp_path):
    """The published 256 px slices (1 mm placeholder spacing) are resampled by spacing onto the
    model's 2 mm grid: the same voxel grid, and the tumour volume within a few percent."""
    import SimpleITK as sitk

    from brainspineai.prognosis.data import load_case
    from brainspineai.prognosis.features import case_features

    src = lgg / "TCGA_CS_4941"
    up = tmp_path / "TCGA_CS_4941"
    up.mkdir()
    for name in ("flair", "mask"):
        img = sitk.ReadImage(str(src / f"{name}.nii.gz"))
        sp = img.GetSpacing()
        ref = sitk.Image([img.GetSize()[0] * 2, img.GetSize()[1] * 2, img.GetSize()[2]], img.GetPixelID())
        ref.SetSpacing((sp[0] / 2, sp[1] / 2, sp[2]))
        ref.SetDirection(img.GetDirection())
        ref.SetOrigin([o - s / 4 for o, s in zip(img.GetOrigin(), sp)][:2] + [img.GetOrigin()[2]])
        interp = sitk.sitkNearestNeighbor
        sitk.WriteImage(sitk.Resample(img, ref, sitk.Transform(), interp, 0), str(up / f"{name}.nii.gz"))
    a, b = load_case(src), load_case(up)
    assert a["images"]["flair"].GetSize() == b["images"]["flair"].GetSize()
    assert b["missing"] == ["t1", "t1ce"]
    fa, fb = case_features(src)["radiomics"], case_features(up)["radiomics"]
    va, vb = fa["original_shape_VoxelVolume"], fb["original_shape_VoxelVolume"]
    assert abs(va - vb) / va < 0.05


def test_clinical_csv_is_validated(lgg, tmp_path):
    from brainspineai.errors import InputError
    from brainspineai.prognosis.data import read_clinical

    rows = read_clinical(lgg / "clinical.csv", need_age=False)
    assert len(rows) == 81 and sum(r.age is None for r in rows) == 1
    assert {r.grade for r in rows} == {2, 3, None}
    with pytest.raises(InputError, match="unknown"):
        read_clinical(lgg / "clinical.csv")  # one patient has no age
    text = (lgg / "clinical.csv").read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text(text.replace("time_days", "days", 1))
    with pytest.raises(InputError, match="lacks the column.*time_days"):
        read_clinical(bad)
    bad.write_text(text.replace(",67,", ",sixty,", 1))
    with pytest.raises(InputError, match="TCGA_CS_4941.*age 'sixty'"):
        read_clinical(bad, need_age=False)


def test_missing_sequence_is_handled(lgg):
    from brainspineai.prognosis.data import load_case
    from brainspineai.prognosis.features import case_features

    p = _flair_only_patient(lgg)
    case = load_case(lgg / p.patient)
    assert case["missing"] == ["t1", "t1ce"] and case["mask"] is not None
    f = case_features(lgg / p.patient)
    assert f["missing"] == ["t1", "t1ce"] and len(f["radiomics"]) > 50


@pytest.fixture(scope="module")
def small_model(lgg, tmp_path_factory, cache):
    from brainspineai.prognosis.training import PrognosisConfig, train_prognosis

    tmp = tmp_path_factory.mktemp("prog")
    data = _small_cohort(lgg, tmp, extra_rows=2)
    cfg = PrognosisConfig(str(data), str(data / "clinical.csv"), str(tmp / "lgg-small"), folds=2, bootstrap=50,
                          cache=str(cache), net_epochs=2)
    return data, train_prognosis(cfg, log=lambda m: None)


def test_model_reloads_to_identical_risks(small_model, lgg):
    from brainspineai.catalogue import load_model, read_card

    data, folder = small_model
    card = read_card(folder)
    assert card["task"] == "prognosis" and set(card["files"]) >= {"prognosis.json", "radiomics.json", "cv.json"}
    assert "c_index_95ci" in card["metrics"]["variants"]["age"]
    assert card["training_data"]["features_not_computed"] == {}  # pyradiomics computed every feature here
    m1 = load_model(str(folder), "cpu", task="prognosis")
    m2 = load_model(str(folder), "cpu", task="prognosis")
    r1 = m1.predict(lgg / "TCGA_CS_4941", 67)
    r2 = m2.predict(lgg / "TCGA_CS_4941", 67)
    assert r1 == r2
    assert r1["risk_group"] in ("low", "high")
    probs = r1["survival"]["probability"]
    assert probs[0] == 1.0 and all(a >= b for a, b in zip(probs, probs[1:]))
    assert abs(sum(r1["grade"]["probabilities"].values()) - 1) < 1e-6
    older = m1.predict(lgg / "TCGA_CS_4941", 80)
    if any(f == "age" for f in m1.cox.features):
        assert older["risk"] != r1["risk"]


def test_tampered_model_is_refused(small_model, tmp_path):
    from brainspineai.catalogue import load_model
    from brainspineai.errors import ChecksumError

    _, folder = small_model
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    s = json.loads((copy / "radiomics.json").read_text())
    s["setting"]["binCount"] = 8
    (copy / "radiomics.json").write_text(json.dumps(s))
    with pytest.raises(ChecksumError):
        load_model(str(copy), "cpu", task="prognosis")


def test_cli_prognosis_and_evaluate(small_model, lgg, tmp_path):
    data, folder = small_model
    out = tmp_path / "p.json"
    r = run_cli("prognosis", lgg / _flair_only_patient(lgg).patient, "--age", "50", "--model", folder, "--json", out)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert set(doc) >= {"risk", "risk_group", "survival", "grade", "modality_weights"}
    assert set(doc["survival"]) == {"days", "probability"} and set(doc["grade"]) == {"probabilities"}
    ev = tmp_path / "e.json"
    km = tmp_path / "km.png"
    r = run_cli("evaluate-prognosis", data, "--clinical", data / "clinical.csv", "--model", folder,
                "--json", ev, "--km", km, "--bootstrap", "50")
    assert r.returncode == 0, r.stderr
    doc = json.loads(ev.read_text())
    assert 0 <= doc["c_index"] <= 1 and len(doc["c_index_95ci"]) == 2 and set(doc["time_auc"]) == {"1y", "2y", "3y"}
    assert "grade_auc" in doc and km.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args,match", [
    (["--age", "abc"], "--age: invalid float"),
    ([], "age is unknown"),
    (["--age", "300"], "plausible age"),
])
def test_cli_bad_age_is_one_line(small_model, lgg, tmp_path, args, match):
    _, folder = small_model
    out = tmp_path / "p.json"
    r = run_cli("prognosis", lgg / "TCGA_CS_4941", *args, "--model", folder, "--json", out)
    assert r.returncode == 2 and match in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_cli_bad_inputs_are_one_line(small_model, lgg, tmp_path):
    _, folder = small_model
    case = tmp_path / "case"
    case.mkdir()
    shutil.copy(lgg / "TCGA_CS_4941" / "t1.nii.gz", case / "t1.nii.gz")
    r = run_cli("prognosis", case, "--age", "50", "--model", folder)
    assert r.returncode == 2 and "no flair" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    shutil.copy(lgg / "TCGA_CS_4941" / "flair.nii.gz", case / "flair.nii.gz")
    r = run_cli("prognosis", case, "--age", "50", "--model", folder)
    assert r.returncode == 2 and "no tumour mask" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "c.csv"
    bad.write_text("patient,age\nTCGA_CS_4941,67\n")
    out = tmp_path / "m"
    r = run_cli("train", "prognosis", "--data", lgg, "--clinical", bad, "--out", out)
    assert r.returncode == 2 and "lacks the column" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_a_brats_labelmap_is_taken_as_its_whole_tumour(lgg, tmp_path):
    """``prognosis --mask`` takes the labelmap ``brainspineai segment`` writes (1 / 2 / 4): the
    whole tumour, so a labelmap whose labels cover exactly the expert mask gives the expert
    mask's answer; other label values are refused in one line."""
    import SimpleITK as sitk

    from brainspineai.catalogue import load_model

    case = lgg / "TCGA_CS_4941"
    expert = sitk.ReadImage(str(case / "mask.nii.gz"))
    arr = (sitk.GetArrayFromImage(expert) > 0).astype(np.uint8)
    lab = arr * 2  # oedema, with a core and an enhancing part inside
    k = int(np.argmax(arr.sum((1, 2))))
    lab[k][arr[k] > 0] = 1
    lab[k + 1][arr[k + 1] > 0] = 4
    img = sitk.GetImageFromArray(lab)
    img.CopyInformation(expert)
    sitk.WriteImage(img, str(tmp_path / "seg.nii.gz"))
    model = load_model("tcga-lgg-prognosis", "cpu", task="prognosis")
    assert model.predict(case, 67, mask=tmp_path / "seg.nii.gz") == model.predict(case, 67)
    img = sitk.GetImageFromArray(arr * 3)
    img.CopyInformation(expert)
    sitk.WriteImage(img, str(tmp_path / "three.nii.gz"))
    r = run_cli("prognosis", case, "--age", "67", "--mask", tmp_path / "three.nii.gz")
    assert r.returncode == 2 and "neither binary nor a BraTS labelmap" in r.stderr and r.stderr.count("\n") == 1


def test_network_missing_sequence_and_reload(lgg, cache):
    """The multi-modal network on real patients: the attention gives a missing sequence weight
    0 and the others sum to 1; its weights reload (safetensors) to identical outputs."""
    import torch

    from brainspineai.prognosis.data import REFERENCE_SPACING, read_clinical
    from brainspineai.prognosis.network import (NetConfig, cohort_tensors, cox_loss, load_state, run_network,
                                                save_state, train_network)

    rows = [r for r in read_clinical(lgg / "clinical.csv", need_age=False) if r.patient in FEW]
    flair_only = _flair_only_patient(lgg)
    X, av = cohort_tensors(lgg, rows + [flair_only], REFERENCE_SPACING, cache)
    assert X.shape[1:3] == (3, 8) and av[-1].tolist() == [False, False, True] and av[0].all()
    age = np.asarray([r.age for r in rows + [flair_only]])
    t = np.asarray([r.time_days for r in rows + [flair_only]])
    e = np.asarray([r.event for r in rows + [flair_only]])
    g = np.asarray([r.grade for r in rows + [flair_only]], dtype=float)
    cfg = NetConfig(epochs=3)
    net = train_network(X, av, (age - 50) / 15, t, e, g, cfg)
    r1, g1, w1 = run_network(net, X, av, (age - 50) / 15)
    assert np.allclose(w1.sum(axis=1), 1) and np.all(w1[-1, :2] == 0)
    net2 = load_state(save_state(net), cfg.__dict__)
    r2, g2, w2 = run_network(net2, X, av, (age - 50) / 15)
    assert np.array_equal(r1, r2) and np.array_equal(g1, g2) and np.array_equal(w1, w2)
    # dropping T1c of a complete patient changes its weights, FLAIR stays available
    av_drop = av.clone()
    av_drop[0, 1] = False
    _, _, w3 = run_network(net, X, av_drop, (age - 50) / 15)
    assert w3[0, 1] == 0 and abs(w3[0].sum() - 1) < 1e-6
    # the Cox loss prefers the risk order that matches the deaths
    tt, ee = torch.tensor([100.0, 200.0, 300.0]), torch.tensor([1.0, 1.0, 0.0])
    assert cox_loss(torch.tensor([2.0, 1.0, 0.0]), tt, ee) < cox_loss(torch.tensor([0.0, 1.0, 2.0]), tt, ee)


def test_shipped_default_model_runs_on_a_real_patient(lgg, tmp_path):
    """The shipped default (pinned) gives the documented JSON for a patient, from the CLI."""
    from brainspineai.catalogue import read_card, resolve_model, shipped_pins

    folder = resolve_model("tcga-lgg-prognosis")
    card = read_card(folder)
    assert "tcga-lgg-prognosis" in shipped_pins() and card["task"] == "prognosis"
    assert set(card["metrics"]["variants"]) >= {"age", "radiomics", "radiomics+age"}
    assert card["must_not_be_used_for"]
    out = tmp_path / "p.json"
    r = run_cli("prognosis", lgg / "TCGA_CS_4942", "--age", "44", "--json", out)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["model"] == "tcga-lgg-prognosis" and doc["risk_group"] in ("low", "high")
    assert abs(sum(doc["modality_weights"].values()) - 1) < 1e-6


def test_a_feature_pyradiomics_could_not_compute_gives_no_prediction(lgg, tmp_path, monkeypatch, capfd):
    """pyradiomics logs a failed feature and returns NaN for it; a feature the model weighs is
    then refused in one line (exit 2, no JSON), not predicted from the 0.0 that stands in for it;
    the cohort features of training name it per patient."""
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    from brainspineai.catalogue import load_model
    from brainspineai.cli.main import main
    from brainspineai.errors import InputError
    from brainspineai.prognosis.data import read_clinical
    from brainspineai.prognosis.features import cohort_features

    model = load_model("tcga-lgg-prognosis", "cpu", task="prognosis")
    feature = sorted(model.weighted_features - {"age"})[0]
    real = RadiomicsFeatureExtractor.execute

    def failing(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        out[feature] = float("nan")
        return out

    monkeypatch.setattr(RadiomicsFeatureExtractor, "execute", failing)
    with pytest.raises(InputError, match=feature):
        model.predict(lgg / "TCGA_CS_4942", 44)
    out = tmp_path / "p.json"
    rc = main(["prognosis", str(lgg / "TCGA_CS_4942"), "--age", "44", "--json", str(out)])  # patched here too
    err = capfd.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("brainspineai: error: ") and feature in err, err
    assert not out.exists()
    # training: the stand-in is kept, and said (logged, and in the card's training_data)
    patient = next(p for p in read_clinical(lgg / "clinical.csv", need_age=False) if p.patient == "TCGA_CS_4942")
    failed = {}
    X, names, _ = cohort_features(lgg, [patient], not_finite=failed)
    assert failed == {"TCGA_CS_4942": [feature]} and X[0, names.index(feature)] == 0.0


def _series(lgg, tmp_path, names=("2019-01-10", "2020-01-10")):
    """A series folder of two studies of TCGA_CS_4941: the real study, and the same images with
    the expert mask grown by 2 voxels in-plane (a tumour that grew)."""
    import SimpleITK as sitk

    src = lgg / "TCGA_CS_4941"
    series = tmp_path / "series"
    for name in names:
        (series / name).mkdir(parents=True)
        for f in ("flair.nii.gz", "t1.nii.gz", "t1ce.nii.gz"):
            if (src / f).exists():
                (series / name / f).symlink_to(src / f)
    (series / names[0] / "mask.nii.gz").symlink_to(src / "mask.nii.gz")
    mask = sitk.ReadImage(str(src / "mask.nii.gz"))
    grown = sitk.BinaryDilate(sitk.Cast(mask > 0, sitk.sitkUInt8), [2, 2, 0])
    sitk.WriteImage(grown, str(series / names[1] / "mask.nii.gz"))
    return series


def test_several_time_points_give_growth_and_the_latest_prognosis(lgg, tmp_path):
    """A patient with two studies a year apart: the studies are ordered by date, each gets its
    tumour volume and mean diameter from the header spacing, the VDE is the diameter change per
    year, and the prediction is the latest study's own; bad series get one line, exit 2."""
    import SimpleITK as sitk

    from brainspineai.catalogue import load_model

    series = _series(lgg, tmp_path)
    out = tmp_path / "p.json"
    r = run_cli("prognosis", series, "--age", "67", "--json", out)
    assert r.returncode == 0, r.stderr
    assert "VDE" in r.stdout and "latest study" in r.stdout
    doc = json.loads(out.read_text())
    pts = doc["time_points"]
    assert [p["study"] for p in pts] == ["2019-01-10", "2020-01-10"] and [p["days"] for p in pts] == [0.0, 365.0]
    sizes = []
    for name in ("2019-01-10", "2020-01-10"):
        m = sitk.ReadImage(str(series / name / "mask.nii.gz"))
        v = (sitk.GetArrayFromImage(m) > 0).sum() * np.prod(m.GetSpacing())
        sizes.append((v / 1000, (2 * v) ** (1 / 3)))
    assert [p["tumour_volume_ml"] for p in pts] == pytest.approx([s[0] for s in sizes], abs=1e-3)
    assert sizes[1][0] > sizes[0][0]
    vde = (sizes[1][1] - sizes[0][1]) / (365 / 365.25)
    assert doc["growth"]["vde_mm_per_year"] == pytest.approx(vde, abs=1e-3) and vde > 0
    model = load_model("tcga-lgg-prognosis", "cpu", task="prognosis")
    latest = model.predict(series / "2020-01-10", 67)
    assert doc["grade"] == latest["grade"] and doc["risk"] == latest["risk"] and doc["study"] == "2020-01-10"
    # the grown mask changes the radiomics, so the two studies' grade probabilities differ
    assert pts[0]["grade_III"] != pts[1]["grade_III"]
    r = run_cli("prognosis", series, "--age", "67", "--progress", "jsonl")  # as 3D Slicer runs it
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and any("study 2/2: 2020-01-10" in e.get("message", "") for e in events)
    assert events[-1]["event"] == "done" and events[-1]["result"]["time_points"] == pts

    # timepoints.csv orders studies whose names are not dates
    other = _series(lgg, tmp_path / "b", names=("later", "earlier"))
    (other / "timepoints.csv").write_text("study,days\nlater,400\nearlier,35\n")
    r = run_cli("prognosis", other, "--age", "67", "--json", out)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert [(p["study"], p["days"]) for p in doc["time_points"]] == [("earlier", 0.0), ("later", 365.0)]
    assert doc["growth"]["vde_mm_per_year"] < 0  # the larger mask came first

    bad = tmp_path / "bad.json"
    (other / "timepoints.csv").unlink()
    r = run_cli("prognosis", other, "--age", "67", "--json", bad)
    assert r.returncode == 2 and "is not a date" in r.stderr and r.stderr.count("\n") == 1
    (other / "timepoints.csv").write_text("study,days\nlater,400\n")
    r = run_cli("prognosis", other, "--age", "67", "--json", bad)
    assert r.returncode == 2 and "no days for the study folder(s) earlier" in r.stderr
    r = run_cli("prognosis", series, "--age", "67", "--mask", series / "2019-01-10" / "mask.nii.gz", "--json", bad)
    assert r.returncode == 2 and "--mask applies to one study" in r.stderr
    assert not bad.exists()
