"""Metrics against values worked out by hand."""
import numpy as np

from brainspineai.metrics import classification_metrics, save_confusion_png


def test_metrics_by_hand(tmp_path):
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y_true, y_pred, ["a", "b", "c"])
    assert m["accuracy"] == 4 / 6
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3}
    assert np.isclose(m["per_class"]["b"]["precision"], 0.5)
    png = tmp_path / "cm.png"
    save_confusion_png(m["confusion_matrix"], ["a", "b", "c"], png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------
# AUC, sensitivity, specificity with bootstrap CIs; penultimate features; t-SNE figure

import json
import time

import pytest

from brainspineai.metrics import _weighted_ovr_auc, probability_metrics, save_embedding_png
from conftest import KAGGLE, need, run_cli


def _stats(pm):
    """Every (name, {value, ci95, n_bootstrap_used}) of a probability_metrics result."""
    yield "macro_auc", pm["macro_auc"]
    yield "accuracy", pm["accuracy"]
    for cls, d in pm["per_class"].items():
        for k, v in d.items():
            yield f"{cls}.{k}", v


@pytest.fixture(scope="module")
def held_out(kaggle_model, validation_images):
    """The default model's softmax on its whole held-out validation split (666 kaggle4 slices)."""
    from brainspineai.classification.data import load_slice_batch
    from brainspineai.classification.preprocess import crop_mode
    from brainspineai.classification.predict import predict_batches

    names = kaggle_model.class_names
    paths = [p for c in names for p in validation_images[c]]
    labels = np.array([names.index(c) for c in names for _ in validation_images[c]])
    batch = load_slice_batch(paths, kaggle_model.input_size, crop=crop_mode(kaggle_model.card, volume=False))
    probs = predict_batches(kaggle_model.network, batch, kaggle_model.device)
    return labels, probs, names


@pytest.mark.slow
def test_probability_metrics_of_the_default_model_on_its_held_out_split(held_out):
    from sklearn.metrics import roc_auc_score

    labels, probs, names = held_out
    pm = probability_metrics(labels, probs, names, n_bootstrap=1000, seed=0)
    json.dumps(pm)  # JSON-ready
    macro = pm["macro_auc"]
    assert macro["value"] > 0.9
    assert macro["value"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert macro["n_bootstrap_used"] == pm["n_bootstrap_used"] == 1000
    lo, hi = macro["ci95"]
    assert 0.9 < lo < hi <= 1.0  # the model makes mistakes here, so the interval is not degenerate
    for name, s in _stats(pm):
        assert s["ci95"][0] <= s["value"] <= s["ci95"][1], name
    pred = probs.argmax(1)
    assert pm["accuracy"]["value"] == pytest.approx(np.mean(pred == labels))
    for c, name in enumerate(names):
        tn = np.sum((labels != c) & (pred != c))
        fp = np.sum((labels != c) & (pred == c))
        tp = np.sum((labels == c) & (pred == c))
        assert pm["per_class"][name]["specificity"]["value"] == pytest.approx(tn / (tn + fp))
        assert pm["per_class"][name]["sensitivity"]["value"] == pytest.approx(tp / np.sum(labels == c))
        assert pm["per_class"][name]["auc"]["value"] == pytest.approx(roc_auc_score(labels == c, probs[:, c]))
    # some class has false positives, so at least one specificity is below 1 with a real interval
    assert min(d["specificity"]["value"] for d in pm["per_class"].values()) < 1
    # same seed, same intervals; another seed, (slightly) different ones
    again = probability_metrics(labels, probs, names, n_bootstrap=1000, seed=0)
    assert again["macro_auc"]["ci95"] == macro["ci95"]
    other = probability_metrics(labels, probs, names, n_bootstrap=1000, seed=1)
    assert other["macro_auc"]["ci95"] != macro["ci95"]


def test_shuffled_labels_give_chance_auc(held_out):
    labels, probs, names = held_out
    shuffled = np.random.default_rng(0).permutation(labels)
    pm = probability_metrics(shuffled, probs, names, n_bootstrap=300)
    assert abs(pm["macro_auc"]["value"] - 0.5) < 0.08
    lo, hi = pm["macro_auc"]["ci95"]
    assert lo < 0.5 < hi


def test_perfect_classifier_gives_one_with_degenerate_intervals():
    y = np.repeat(np.arange(3), 10)
    probs = np.full((30, 3), 0.05)
    probs[np.arange(30), y] = 0.9
    pm = probability_metrics(y, probs, ["a", "b", "c"], n_bootstrap=200)
    for name, s in _stats(pm):
        assert s["value"] == 1.0 and s["ci95"] == [1.0, 1.0], name
    assert pm["n_bootstrap_used"] <= 200  # resamples missing a class are skipped for AUC
    zero = probability_metrics(y, probs, ["a", "b", "c"], n_bootstrap=0)
    assert zero["macro_auc"] == {"value": 1.0, "ci95": None, "n_bootstrap_used": 0}
    assert all(s["ci95"] is None for _, s in _stats(zero))


def test_bootstrap_auc_equals_sklearn_on_the_resampled_cases():
    """The vectorised weighted Mann–Whitney AUC (ties counted 1/2) against scikit-learn on
    explicitly resampled data, with many tied scores."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    n = 200
    y = rng.integers(0, 2, n).astype(bool)
    scores = np.round(rng.normal(size=n) + y, 1)
    weights = rng.multinomial(n, np.full(n, 1 / n), size=5).astype(float)
    got = _weighted_ovr_auc(np.vstack([np.ones(n), weights]), y, scores)
    assert got[0] == pytest.approx(roc_auc_score(y, scores))
    for b, w in enumerate(weights):
        idx = np.repeat(np.arange(n), w.astype(int))
        assert got[b + 1] == pytest.approx(roc_auc_score(y[idx], scores[idx]))


def test_absent_class_gives_no_macro_auc_but_per_class_values():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)  # class 2 absent
    probs = rng.dirichlet(np.ones(3), size=40)
    probs[np.arange(40), y] += 1
    probs /= probs.sum(1, keepdims=True)
    pm = probability_metrics(y, probs, ["a", "b", "c"], n_bootstrap=100)
    assert pm["macro_auc"]["value"] is None and pm["macro_auc"]["ci95"] is None
    assert pm["per_class"]["c"]["auc"]["value"] is None and pm["per_class"]["c"]["sensitivity"]["value"] is None
    assert pm["per_class"]["c"]["specificity"]["value"] is not None
    assert pm["per_class"]["a"]["auc"]["value"] > 0.5 and pm["per_class"]["a"]["auc"]["ci95"] is not None


def test_bootstrap_of_700_cases_is_fast():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 700)
    logits = rng.normal(size=(700, 4))
    logits[np.arange(700), y] += 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    t0 = time.perf_counter()
    pm = probability_metrics(y, probs, list("abcd"), n_bootstrap=1000)
    assert time.perf_counter() - t0 < 5
    assert pm["n_bootstrap_used"] == 1000


@pytest.mark.parametrize("case, message", [
    ("nan", "NaN"), ("columns", "columns"), ("rows", "shape"), ("empty", "N == 0"), ("range", "y_true values"),
    ("not-softmax", "sum to 1"),
])
def test_probability_metrics_refuses_bad_input(case, message):
    y = np.array([0, 1, 2, 0])
    probs = np.eye(3)[y].astype(float)
    if case == "nan":
        probs[1, 1] = np.nan
    elif case == "columns":
        probs = probs[:, :2]
    elif case == "rows":
        y = y[:3]
    elif case == "empty":
        y, probs = y[:0], probs[:0]
    elif case == "range":
        y = np.array([0, 1, 3, 0])
    elif case == "not-softmax":
        probs = probs * 2
    with pytest.raises(ValueError, match=message):
        probability_metrics(y, probs, ["a", "b", "c"])


@pytest.fixture(scope="module")
def real_slices(kaggle_model, validation_images):
    """32 held-out slices (the last 8 of each class in the split) as a prepared batch."""
    from brainspineai.classification.data import load_slice_batch
    from brainspineai.classification.preprocess import crop_mode

    names = kaggle_model.class_names
    paths = [p for c in names for p in validation_images[c][-8:]]
    labels = np.repeat(np.arange(len(names)), 8)
    return load_slice_batch(paths, kaggle_model.input_size, crop=crop_mode(kaggle_model.card, volume=False)), labels


def test_penultimate_features_are_the_input_of_fc(kaggle_model, real_slices):
    import torch

    from brainspineai.classification.embeddings import penultimate_features
    from brainspineai.errors import ModelError
    from brainspineai.classification.predict import predict_batches

    batch, _ = real_slices
    net = kaggle_model.network
    feats = penultimate_features(net, batch, kaggle_model.device, batch_size=10)
    assert feats.shape == (32, 256) and feats.dtype == np.float32 and np.all(np.isfinite(feats))
    with torch.no_grad():
        from_features = torch.softmax(net.fc(torch.from_numpy(feats)), 1).numpy()
    np.testing.assert_allclose(from_features, predict_batches(net, batch, kaggle_model.device), atol=1e-5)
    assert not net.training and not net.fc._forward_pre_hooks  # mode kept, hook removed
    with pytest.raises(ModelError, match="fc"):
        penultimate_features(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)), batch[:, :, :2, :2],
                             kaggle_model.device)


def test_embedding_png_of_real_slices_separates_classes(kaggle_model, real_slices, tmp_path):
    import cv2

    from brainspineai.classification.embeddings import penultimate_features

    batch, labels = real_slices
    feats = penultimate_features(kaggle_model.network, batch, kaggle_model.device)
    png = tmp_path / "sub" / "tsne.png"
    xy = save_embedding_png(feats, labels, kaggle_model.class_names, png, seed=0)
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 300
    assert xy.shape == (32, 2) and xy.dtype == np.float32 and np.all(np.isfinite(xy))
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert np.mean(labels[d.argmin(1)] == labels) > 0.8  # nearest neighbour in the plot shares the class
    assert [p.name for p in png.parent.iterdir()] == ["tsne.png"]  # no temporary file left
    with pytest.raises(ValueError, match="at least 5"):
        save_embedding_png(feats[:4], labels[:4], kaggle_model.class_names, tmp_path / "x.png")
    with pytest.raises(ValueError, match="labels must have shape"):
        save_embedding_png(feats, labels[:-1], kaggle_model.class_names, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_cli_evaluate_writes_auc_with_intervals_and_embedding(tmp_path, kaggle_model, validation_images):
    import cv2

    root = need(KAGGLE)
    chosen = [str(p.relative_to(root)) for c in kaggle_model.class_names for p in validation_images[c][-10:]]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"validation": chosen}))
    out = tmp_path / "out"
    r = run_cli("evaluate", root, "--device", "cpu", "--split", split, "--json", out / "e.json",
                "--embedding-png", out / "tsne.png", "--bootstrap", "200")
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "e.json").read_text())
    assert doc["n"] == 40 and 0 <= doc["accuracy"] <= 1  # existing top-level keys unchanged
    pm = doc["probability_metrics"]
    assert pm["n"] == 40 and pm["n_bootstrap"] == 200 and pm["accuracy"]["value"] == doc["accuracy"]
    assert pm["macro_auc"]["value"] > 0.9
    for name, s in _stats(pm):
        assert s["ci95"][0] <= s["value"] <= s["ci95"][1], name
    assert set(pm["per_class"]) == set(kaggle_model.class_names)
    assert cv2.imread(str(out / "tsne.png")) is not None
    assert "macro AUC (one-vs-rest)" in r.stdout and "specificity" in r.stdout
    bad = run_cli("evaluate", root, "--device", "cpu", "--split", split, "--json", tmp_path / "bad" / "e.json",
                  "--bootstrap", "-1")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("brainspineai: error: --bootstrap")
    assert not (tmp_path / "bad").exists()
