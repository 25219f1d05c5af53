"""Localisation metrics of heatmaps (issue 16) on real slices and volumes with known tumours,
heat only inside the head, and the CAM methods of the grad-cam package."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import DATA, FIGSHARE, KAGGLE, KAGGLE_MODEL_ID, need, run_cli

LGG = DATA / "volumes" / "tcga-lgg-flair"


def _rows(n=6):
    from brainspineai.classification.localisation import read_boxes

    rows = read_boxes(need(FIGSHARE) / "tumor_boxes.csv")
    return rows[::len(rows) // n][:n]  # glioma, meningioma and pituitary rows


def _blob(shape, cy, cx, sigma):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))


def test_a_map_on_the_box_scores_higher_than_one_away_from_it():
    """Real figshare3 slices with expert boxes: a map centred on the box wins the pointing game
    and puts more energy in the box than the same map centred on the mirrored position."""
    from brainspineai.classification.explain import head_mask
    from brainspineai.classification.localisation import box_mask, localisation_scores
    from brainspineai.classification.preprocess import slice_array
    from brainspineai.io import read_image

    for r in _rows():
        arr = slice_array(read_image(FIGSHARE / r["image"]))
        H, W = arr.shape
        box = box_mask(arr.shape, r["x_center"], r["y_center"], r["width"], r["height"])
        assert 0 < box.mean() < 0.5
        head = head_mask(arr)
        assert head[box].mean() > 0.9, "the tumour box lies inside the head"
        sigma = max(2.0, 0.25 * max(r["width"] * W, r["height"] * H))
        on = _blob(arr.shape, r["y_center"] * H, r["x_center"] * W, sigma)
        shift = 0.35 if r["x_center"] < 0.5 else -0.35  # same row, a third of the image aside
        away = _blob(arr.shape, r["y_center"] * H, (r["x_center"] + shift) * W, sigma)
        good, bad = localisation_scores(on, box, head), localisation_scores(away, box, head)
        assert good["pointing"] and not bad["pointing"]
        assert good["energy_in_tumour"] > 0.3 > bad["energy_in_tumour"] + 0.2


def test_a_miss_in_the_mirror_hemisphere_is_told_apart_from_a_near_miss():
    """Real figshare3 slices with expert boxes, maps centred on the box, just beside it and on
    its mirror image across the head's midline: distances 0, a few mm and far; only the mirror
    is across the midline; :func:`summarise` counts the misses by distance and side."""
    from brainspineai.classification.explain import head_mask
    from brainspineai.classification.localisation import box_mask, localisation_scores, summarise
    from brainspineai.classification.preprocess import slice_array
    from brainspineai.io import read_image

    scores, sided = [], 0
    for r in _rows():
        arr = slice_array(read_image(FIGSHARE / r["image"]))
        H, W = arr.shape
        box = box_mask(arr.shape, r["x_center"], r["y_center"], r["width"], r["height"])
        head = head_mask(arr)
        mid = float(np.nonzero(head)[1].mean())
        cy, cx = np.nonzero(box)[0].mean(), np.nonzero(box)[1].mean()
        x1 = np.nonzero(box)[1].max()
        on = localisation_scores(_blob(arr.shape, cy, cx, 3.0), box, head)
        beside = localisation_scores(_blob(arr.shape, cy, x1 + 6, 3.0), box, head)
        mirror = localisation_scores(_blob(arr.shape, cy, 2 * mid - cx, 3.0), box, head)
        assert on["peak_distance_mm"] == 0.0 and on["pointing"] and not on["peak_other_side"]
        assert 3.0 < beside["peak_distance_mm"] <= 7.0 and not beside["pointing"]
        assert on["tumour_mm2"] == float(box.sum())  # JPEGs: 1 mm per pixel
        if abs(cx - mid) > 10 + box.shape[1] * r["width"] / 2:  # a tumour off the midline
            sided += 1
            assert mirror["peak_other_side"] is True and mirror["peak_distance_mm"] > 10.0
            assert beside["peak_other_side"] is False
            scores += [on, beside, mirror]
    assert sided >= 2
    s = summarise(scores)
    assert s["misses"]["<= 10 mm"] == sided and s["misses"]["other_side"] == sided
    assert s["misses"]["10-30 mm"] + s["misses"]["> 30 mm"] == sided and s["misses"]["no heat"] == 0
    assert s["n_small"] + s["n_large"] == len(scores)


def test_pointing_interval_resamples_patients():
    """The pointing game's interval resamples whole patients when the scores name them: one
    patient all hits and one all misses give a wide interval; the same slices as independent
    single slices a narrower one; the interval holds the rate."""
    from brainspineai.classification.localisation import summarise

    scores = [{"pointing": True, "energy_in_tumour": 0.5, "heat_outside_head": 0.0, "case": "a"}] * 20 + \
             [{"pointing": False, "energy_in_tumour": 0.1, "heat_outside_head": 0.0, "case": "b"}] * 20
    by_patient = summarise(scores)
    by_slice = summarise([{k: v for k, v in s.items() if k != "case"} for s in scores])
    assert by_patient["pointing"] == by_slice["pointing"] == 0.5
    assert by_patient["n_cases"] == 2 and by_slice["n_cases"] is None
    lo, hi = by_patient["pointing_ci95"]
    assert lo == 0.0 and hi == 1.0
    lo2, hi2 = by_slice["pointing_ci95"]
    assert 0.25 < lo2 < 0.5 < hi2 < 0.75


def test_pointing_tolerance_is_in_millimetres():
    from brainspineai.classification.localisation import pointing_hit

    target = np.zeros((40, 40), bool)
    target[10:20, 10:20] = True
    heat = np.zeros((40, 40))
    heat[22, 15] = 1.0  # 3 pixels below the box
    assert pointing_hit(heat, target, (1.0, 1.0), 3.0) and not pointing_hit(heat, target, (1.0, 1.0), 2.0)
    assert not pointing_hit(heat, target, (2.0, 2.0), 3.0)  # 6 mm away at 2 mm pixels
    assert not pointing_hit(np.zeros((40, 40)), target)  # no heat, no hit
    with pytest.raises(ValueError):
        pointing_hit(heat, np.zeros((40, 40), bool))


def test_heat_outside_the_head_is_zero(kaggle_model, validation_images):
    """2D slice and real LGG volume: classify_image's heatmap is 0 outside the head mask, and
    the metric says so; without the mask the same method puts heat outside the head."""
    import SimpleITK as sitk

    from brainspineai.classification.explain import head_mask
    from brainspineai.classification.inference import classify_image
    from brainspineai.classification.localisation import localisation_scores, score_volume
    from brainspineai.classification.preprocess import slice_array, to_lps_axial
    from brainspineai.io import read_image

    img = read_image(validation_images["glioma"][0])
    res = classify_image(img, kaggle_model, heatmap=True)
    heat, head = slice_array(res.heatmap), head_mask(slice_array(img))
    assert heat.max() == pytest.approx(1.0) and 0.2 < head.mean() < 0.95
    assert np.all(heat[~head] == 0)
    assert localisation_scores(heat, head, head)["heat_outside_head"] == 0.0
    assert res.to_json()["heatmap_method"]["method"] in ("gradcam", "gradcam++", "hirescam", "layercam")

    case = need(LGG) / "TCGA_CS_4941"  # 23 slices
    vol = read_image(case / "flair.nii.gz")
    res = classify_image(vol, kaggle_model, heatmap=True, heatmap_class="glioma")
    h = sitk.GetArrayFromImage(to_lps_axial(res.heatmap))
    a = sitk.GetArrayFromImage(to_lps_axial(vol))
    outside = sum(float(h[k][~head_mask(a[k])].sum()) for k in range(a.shape[0]))
    assert h.max() == pytest.approx(1.0) and outside == 0.0
    assert res.strongest_slice == int(h.max(axis=(1, 2)).argmax())
    label = read_image(case / "mask.nii.gz")
    raw = score_volume(kaggle_model, vol, label, None, "glioma", "gradcam", "layer4", mask_head=False, step=4)
    masked = score_volume(kaggle_model, vol, label, None, "glioma", "gradcam", "layer4", mask_head=True, step=4)
    assert raw and max(s["heat_outside_head"] for s in raw) > 0.01
    assert all(s["heat_outside_head"] == 0.0 for s in masked)


def test_cam_methods_and_layers(kaggle_model, validation_images):
    """Every method gives a non-negative map at the input size; earlier stages are finer
    (more distinct values) than layer4; an unknown method or layer is refused."""
    from brainspineai.classification.explain import METHODS, cam_batch, heatmap_choice, parse_method
    from brainspineai.classification.preprocess import prepare_slices, slice_array
    from brainspineai.errors import InputError
    from brainspineai.io import read_image

    x, _, _ = prepare_slices([slice_array(read_image(validation_images["meningioma"][0]))], 128)
    k = kaggle_model.class_names.index("meningioma")
    maps = {m: cam_batch(kaggle_model, x, k, m, "layer4") for m in METHODS}
    for m in maps.values():
        assert m.shape == (1, 128, 128) and m.min() >= 0 and m.max() > 0
    assert not np.allclose(maps["gradcam"], maps["layercam"])
    fine = cam_batch(kaggle_model, x, k, "layercam", "layer2")
    assert fine.max() > 0 and not np.allclose(fine / fine.max(), maps["layercam"] / maps["layercam"].max())
    assert parse_method("layercam@layer3") == ("layercam", "layer3")
    with pytest.raises(InputError):
        parse_method("saliency")
    with pytest.raises(InputError, match="no layer"):
        cam_batch(kaggle_model, x, k, "gradcam", "layer9")
    assert heatmap_choice(kaggle_model, "hirescam", "layer3") == ("hirescam", "layer3")
    assert not kaggle_model.network.layer4._forward_hooks, "hooks are removed after use"


def test_methods_match_the_grad_cam_package(kaggle_model, validation_images):
    """The channel weighting is the grad-cam package's (where it is installed; not a dependency)."""
    gc = pytest.importorskip("pytorch_grad_cam", reason="grad-cam is not installed (optional reference)")
    from brainspineai.classification.explain import METHODS, cam_batch
    from brainspineai.classification.preprocess import prepare_slices, slice_array
    from brainspineai.io import read_image

    x, _, _ = prepare_slices([slice_array(read_image(p)) for p in validation_images["glioma"][:2]], 128)
    k, net = kaggle_model.class_names.index("glioma"), kaggle_model.network
    classes = {"gradcam": gc.GradCAM, "gradcam++": gc.GradCAMPlusPlus, "hirescam": gc.HiResCAM, "layercam": gc.LayerCAM}
    for method in METHODS:
        ours = cam_batch(kaggle_model, x, k, method, "layer3")
        with classes[method](model=net, target_layers=[net.layer3]) as cam:
            ref = cam(x, targets=[gc.utils.model_targets.ClassifierOutputTarget(k)] * 2)  # each min-max scaled
        for a, b in zip(ours, ref):
            a = a - a.min()
            np.testing.assert_allclose(a / (a.max() or 1.0), b, atol=0.03, err_msg=method)


def test_cli_heatmap_method_and_evaluate_localisation(tmp_path, validation_images):
    image = validation_images["glioma"][0]
    bad = run_cli("classify", image, "--device", "cpu", "--heatmap", tmp_path / "h.png", "--heatmap-method", "saliency")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "heatmap method" in bad.stderr
    assert not (tmp_path / "h.png").exists()
    r = run_cli("classify", image, "--model", KAGGLE_MODEL_ID, "--device", "cpu", "--heatmap", tmp_path / "h.png",
                "--json", tmp_path / "r.json", "--heatmap-method", "gradcam++@layer3")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["heatmap_method"]["method"] == "gradcam++"
    assert "Grad-CAM++ at layer3" in r.stdout

    data = tmp_path / "data"
    for cls in ("glioma", "meningioma", "notumor", "pituitary"):
        (data / cls).mkdir(parents=True)
        for p in sorted((need(KAGGLE) / cls).iterdir())[:2]:
            (data / cls / p.name).symlink_to(p)
    boxes = tmp_path / "boxes.csv"
    rows = _rows(3)
    boxes.write_text("image,label,x_center,y_center,width,height\n" + "".join(
        f"{FIGSHARE / r['image']},{r['label']},{r['x_center']},{r['y_center']},{r['width']},{r['height']}\n" for r in rows))
    r = run_cli("evaluate", data, "--device", "cpu", "--bootstrap", "0", "--localisation", boxes, "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    loc = json.loads((tmp_path / "e.json").read_text())["localisation"]
    g = loc["groups"]["2d-boxes"]
    assert g["n"] == 3 and 0 <= g["energy_in_tumour"] <= 1 and g["heat_outside_head"] == 0.0
    assert "pointing game" in r.stdout


BRATS = DATA / "volumes" / "brats2015-flair-t1c"


@pytest.mark.slow
def test_default_heatmap_is_sharpened_by_a_finer_input_scale():
    """The shipped default explains at 128 px (its decision scale) times 192 and 256 px (6 x 6 and
    8 x 8 last-stage grids instead of 4 x 4). One input side gives exactly cam_batch's map; on a real BraTS FLAIR
    volume whose tumour the 128 px map misses on many slices, the product points at it more often
    and holds more of its heat in the tumour; bad sides are refused."""
    from brainspineai.catalogue import load_model
    from brainspineai.classification.explain import cam_batch, heatmap_sizes, multiscale_cam
    from brainspineai.classification.localisation import score_volume, summarise
    from brainspineai.classification.preprocess import prepare_slices, slice_array
    from brainspineai.errors import InputError
    from brainspineai.io import read_image

    m = load_model(None, "cpu")
    assert heatmap_sizes(m) == (128, 192, 256) and heatmap_sizes(m, 160) == (160,)
    for bad in (20, [128, 2000], ["x"], []):
        with pytest.raises(InputError, match="heatmap input size"):
            heatmap_sizes(m, bad)

    arr = slice_array(read_image(sorted((need(FIGSHARE)).glob("*/*.jpg"))[0]))
    x, _, _ = prepare_slices([arr], 128)
    one, geoms = multiscale_cam(m, [arr], [0], 0, "layercam", "layer4", (128,))
    np.testing.assert_allclose(one, cam_batch(m, x, 0, "layercam", "layer4"), rtol=1e-5, atol=1e-7)
    two, geoms = multiscale_cam(m, [arr], [0], 0, "layercam", "layer4", (128, 192))
    assert two.shape == (1, 192, 192) and len(geoms) == 1 and two.max() <= 1.0 + 1e-6 and two.min() >= 0

    case = need(BRATS) / "brats_2013_pat0005_1"
    img, lab, head = (read_image(case / n) for n in ("Flair_subtrMeanDivStd.nii.gz", "OTMultiClass.nii.gz",
                                                     "brainmask.nii.gz"))
    coarse = summarise(score_volume(m, img, lab, head, step=6, input_sizes=128, slice_sigma=0))
    fine = summarise(score_volume(m, img, lab, head, step=6, slice_sigma=0))
    assert coarse["n"] == fine["n"] >= 10
    assert fine["pointing"] >= coarse["pointing"] + 0.2 and fine["energy_in_tumour"] > coarse["energy_in_tumour"]
    assert fine["heat_outside_head"] < 0.02


def test_heatmap_sizes_come_from_one_place():
    """A card's own heatmap entry is complete (the code's default sides are not mixed into it);
    numpy integers are sides; infinite or non-numeric sides are refused in one line."""
    import types

    from brainspineai.classification.explain import heatmap_sizes
    from brainspineai.errors import InputError

    default = types.SimpleNamespace(id="brain-tumor-4class-efficientnetlite0", card={}, input_size=128)
    carded = types.SimpleNamespace(id=default.id, card={"heatmap": {"method": "gradcam", "layer": "layer3"}},
                                   input_size=128)
    assert heatmap_sizes(default) == (128, 192, 256) and heatmap_sizes(carded) == (128,)
    carded.card["heatmap"]["input_sizes"] = [224, 160]
    assert heatmap_sizes(carded) == (160, 224) and heatmap_sizes(default, np.int64(160)) == (160,)
    for bad in (float("inf"), [float("nan")], "abc", 31):
        with pytest.raises(InputError, match="heatmap input size"):
            heatmap_sizes(default, bad)


def test_cli_heatmap_size(tmp_path):
    image = sorted(need(FIGSHARE).glob("*/*.jpg"))[0]
    bad = run_cli("classify", image, "--device", "cpu", "--heatmap", tmp_path / "h.png", "--heatmap-size", "8")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--heatmap-size 8" in bad.stderr
    assert not (tmp_path / "h.png").exists()
    r = run_cli("classify", image, "--device", "cpu", "--heatmap", tmp_path / "h.png", "--json", tmp_path / "r.json",
                "--heatmap-size", "128", "160")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["heatmap_method"]["input_sizes"] == [128, 160]
    assert "128+160 px input" in r.stdout
    for sigma in ("-1", "nan", "25"):
        bad = run_cli("classify", image, "--device", "cpu", "--heatmap", tmp_path / "h2.png", "--heatmap-slice-sigma", sigma)
        assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--heatmap-slice-sigma" in bad.stderr
    assert not (tmp_path / "h2.png").exists()


def test_smoothing_across_slices_weakens_a_one_slice_peak_and_keeps_heat_in_the_head():
    """A blob that five neighbouring slices share, and on the middle slice a hotter spot in the
    other half that no neighbour has: smoothed across slices, that slice's peak is the shared
    blob; nothing lands outside each slice's head (nor on a slice that was not explained);
    sigma 0 changes nothing."""
    from brainspineai.classification.explain import smooth_across_slices

    heads = np.zeros((7, 64, 64), bool)
    heads[1:6, 8:56, 8:56] = True
    heads[3, 8:56, 8:20] = False  # a narrower head on one slice
    heat = np.zeros(heads.shape, np.float32)
    heat[1:6] = _blob((64, 64), 30, 44, 4)
    heat[3] += 1.5 * _blob((64, 64), 30, 24, 3)
    heat *= heads
    assert np.unravel_index(heat[3].argmax(), (64, 64))[1] < 32  # the one-slice spot wins before
    out = smooth_across_slices(heat, heads, 2.5)
    assert out.dtype == np.float32 and out.shape == heat.shape and out.min() >= 0
    assert np.unravel_index(out[3].argmax(), (64, 64)) == (30, 44)
    assert not out[~heads].any()
    assert smooth_across_slices(heat, heads, 0) is heat


def test_heatmap_slice_sigma_comes_from_one_place():
    import types

    from brainspineai.classification.explain import heatmap_slice_sigma
    from brainspineai.errors import InputError

    default = types.SimpleNamespace(id="brain-tumor-4class-efficientnetlite0", card={}, input_size=128)
    carded = types.SimpleNamespace(id=default.id, card={"heatmap": {"method": "gradcam", "layer": "layer3"}})
    other = types.SimpleNamespace(id="brain-tumor-4class-resnet18w32", card={})
    assert heatmap_slice_sigma(default) == 2.5 and heatmap_slice_sigma(carded) == 0 and heatmap_slice_sigma(other) == 0
    carded.card["heatmap"]["slice_sigma"] = 1.5
    assert heatmap_slice_sigma(carded) == 1.5 and heatmap_slice_sigma(default, 0) == 0
    for bad in (-1, float("nan"), float("inf"), "abc", True, np.True_, 21, 10 ** 400):
        with pytest.raises(InputError, match="heatmap slice sigma"):
            heatmap_slice_sigma(default, bad)
    carded.card["heatmap"]["slice_sigma"] = None  # a card's fault is said to be the card's
    with pytest.raises(InputError, match="card, heatmap.slice_sigma"):
        heatmap_slice_sigma(carded)


@pytest.mark.slow
def test_default_heatmap_smoothed_across_slices_points_at_a_real_tumour_more_often():
    """The shipped default on the T1c of a TCGA-LGG validation patient (the patients its smoothing
    was chosen on; its test patients are used by no test): smoothed across slices, the peak
    lands in the tumour on more of its slices, fewer peaks lie in the other hemisphere, and no heat
    leaves the head."""
    from brainspineai.catalogue import load_model
    from brainspineai.classification.localisation import score_volume, summarise
    from brainspineai.io import read_image

    case = need(LGG) / "TCGA_HT_8113"
    img, lab = read_image(case / "t1ce.nii.gz"), read_image(case / "mask.nii.gz")
    m = load_model(None, "cpu")
    flat, smooth = (summarise(score_volume(m, img, lab, slice_sigma=s)) for s in (0, None))
    assert flat["n"] == smooth["n"] >= 8
    assert smooth["pointing"] >= flat["pointing"] + 0.15
    assert smooth["misses"]["other_side"] < flat["misses"]["other_side"]
    assert smooth["heat_outside_head"] == 0.0  # smoothing alone would carry 0.02-0.8% of a slice's heat outside its head
