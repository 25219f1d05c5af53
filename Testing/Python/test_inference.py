"""The shipped model on real images of known class; volumes; Grad-CAM."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from brainspineai.errors import InputError
from brainspineai.classification.inference import classify_image, volume_rule
from brainspineai.io import read_image
from conftest import BRATS23, need

T1C = BRATS23 / "BraTS-GLI-00001-000-t1c.nii.gz"


def test_known_class_slices_are_classified_correctly(kaggle_model, validation_images):
    """Ten held-out images per class (never trained on): at least 9 of 10 right per class."""
    for name, paths in sorted(validation_images.items()):
        preds = [classify_image(read_image(p), kaggle_model).predicted for p in sorted(paths)[:10]]
        assert sum(p == name for p in preds) >= 9, (name, preds)


def test_slice_probabilities_and_heatmap(kaggle_model, validation_images):
    path = sorted(validation_images["glioma"])[0]
    img = read_image(path)
    res = classify_image(img, kaggle_model, heatmap=True)
    assert res.probabilities.shape == (4,) and res.probabilities.sum() == pytest.approx(1.0, abs=1e-6)
    assert res.heatmap.GetSize() == img.GetSize() and res.heatmap_class == res.predicted
    h = sitk.GetArrayFromImage(res.heatmap)
    assert h.min() >= 0 and h.max() == pytest.approx(1.0, abs=1e-5)
    other = classify_image(img, kaggle_model, heatmap=True, heatmap_class="notumor")
    assert other.heatmap_class == "notumor"
    assert not np.allclose(sitk.GetArrayFromImage(other.heatmap), h)
    with pytest.raises(InputError, match="unknown class"):
        classify_image(img, kaggle_model, heatmap=True, heatmap_class="astrocytoma")


@pytest.mark.slow
def test_gradcam_depends_on_the_learned_weights(kaggle_model, validation_images):
    """Model-randomisation sanity check (Adebayo et al., NeurIPS 2018): heatmaps of the trained
    model must not resemble those of the same network with random weights. A map that only
    echoes the input's edges or intensities fails this. (How well the maps localise tumours
    is measured, not asserted, by Testing/Benchmarks/model_report.py.)"""
    import torch
    from scipy.stats import spearmanr

    from brainspineai.catalogue import LoadedModel
    from brainspineai.classification.explain import gradcam_batch
    from brainspineai.classification.networks import build_classifier
    from brainspineai.classification.preprocess import crop_mode, prepare_slices, slice_array

    torch.manual_seed(0)
    random_net = build_classifier(kaggle_model.card["architecture"], len(kaggle_model.class_names)).eval()
    random_model = LoadedModel(card=kaggle_model.card, folder=kaggle_model.folder, network=random_net,
                               device=kaggle_model.device, class_names=kaggle_model.class_names)
    paths = [(p, c) for c in ("glioma", "meningioma", "pituitary") for p in sorted(validation_images[c])[::20]]
    x, _, _ = prepare_slices([slice_array(read_image(p)) for p, _ in paths], kaggle_model.input_size,
                             crop=crop_mode(kaggle_model.card, volume=False))
    corr = []
    for i, (_, c) in enumerate(paths):
        k = kaggle_model.class_names.index(c)
        trained = gradcam_batch(kaggle_model, x[i:i + 1], k)[0].ravel()
        random = gradcam_batch(random_model, x[i:i + 1], k)[0].ravel()
        constant = trained.min() == trained.max() or random.min() == random.max()
        corr.append(np.nan if constant else spearmanr(trained, random).statistic)
    assert np.nanmedian(corr) < 0.4, corr


@pytest.mark.slow
def test_volume_is_classified_whatever_its_storage_orientation(kaggle_model):
    """The same physical volume stored with permuted and flipped axes gives the same answer,
    and each heatmap has exactly its own input's geometry."""
    img = read_image(need(T1C))
    other = sitk.Flip(sitk.PermuteAxes(img, [1, 0, 2]), [True, False, True])
    assert other.GetDirection() != img.GetDirection()
    a = classify_image(img, kaggle_model, heatmap=True)
    b = classify_image(other, kaggle_model, heatmap=True)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    assert [s["index"] for s in a.slices] == [s["index"] for s in b.slices]
    for res, src in ((a, img), (b, other)):
        assert res.heatmap.GetSize() == src.GetSize() and res.heatmap.GetDirection() == src.GetDirection()
        assert res.heatmap.GetOrigin() == pytest.approx(src.GetOrigin())
    p = img.TransformIndexToPhysicalPoint((120, 100, 80))
    assert a.heatmap[a.heatmap.TransformPhysicalPointToIndex(p)] == pytest.approx(
        b.heatmap[b.heatmap.TransformPhysicalPointToIndex(p)], abs=1e-5)
    assert abs(a.probabilities.sum() - 1) < 1e-6 and len(a.slices) > 50


def test_volume_rule():
    classes = ["glioma", "meningioma", "notumor", "pituitary"]
    probs = np.array([[0.1, 0.1, 0.8, 0.0]] * 10 + [[0.7, 0.1, 0.2, 0.0]] * 3)
    p, rule = volume_rule(probs, classes)
    np.testing.assert_allclose(p, [0.7, 0.1, 0.2, 0.0])
    assert "3 tumour slices" in rule
    p, rule = volume_rule(probs[:12], classes)  # only 2 tumour slices: mean over all
    np.testing.assert_allclose(p, probs[:12].mean(0))
    p, _ = volume_rule(np.array([[0.2, 0.5, 0.3]]), ["a", "b", "c"])  # no notumor class
    np.testing.assert_allclose(p, [0.2, 0.5, 0.3])


def test_empty_volume_is_refused(kaggle_model):
    arr = np.zeros((10, 64, 64), np.float32)
    arr[5, 30, 30] = 1.0  # one bright voxel: nothing a model could classify
    with pytest.raises(InputError, match="no axial slice"):
        classify_image(sitk.GetImageFromArray(arr), kaggle_model)
