"""AFF-CL and SSCLNet (SimCLR) pipelines on real slices, with tiny settings (a few steps)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import FIGSHARE, KAGGLE, need, run_cli



def real_batch(n_per_class=4, size=64):
    from brainspineai.classification.data import load_slice_batch, scan_image_folder

    paths, labels, classes = scan_image_folder(need(KAGGLE))
    pick = np.concatenate([np.flatnonzero(labels == c)[:n_per_class] for c in range(len(classes))])
    return load_slice_batch([paths[i] for i in pick], size), torch.as_tensor(labels[pick])


# --- the fusion module -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["aff", "iaff"])
def test_fusion_is_a_convex_position_wise_mix(kind):
    from brainspineai.classification.fusion import build_fusion

    torch.manual_seed(0)
    fuse = build_fusion(kind, 16).eval()
    x, y = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
    z = fuse(x, y)
    m = fuse.last_weight
    assert m.shape == x.shape and float(m.min()) > 0 and float(m.max()) < 1
    assert torch.allclose(z, m * x + (1 - m) * y, atol=1e-6)
    assert float(m.std()) > 0  # the weight varies by position / channel, not one global scalar


def test_fused_model_gradients_reach_both_branches_on_real_slices():
    from brainspineai.classification.networks import TwoBranchNet

    x, y = real_batch()
    torch.manual_seed(0)
    net = TwoBranchNet("resnet10-w32", 4, 64, proj_dim=32)
    out = net(x, return_features=True)
    torch.nn.functional.cross_entropy(out["logits"], y).backward()
    for branch in (net.global_branch, net.local_branch, net.fusion):
        grads = [p.grad for p in branch.parameters() if p.requires_grad]
        assert all(g is not None for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    boxes = out["boxes"]
    assert boxes.shape == (len(x), 3) and torch.all(boxes[:, 2] == 0.5)
    assert torch.all(boxes[:, :2].abs() <= 1)


def test_known_boxes_set_the_local_crop():
    from brainspineai.classification.networks import TwoBranchNet

    x, _ = real_batch(1)
    net = TwoBranchNet("resnet10-w32", 4, 64).eval()
    known = torch.tensor([[0.6, 0.6, 0.8, 0.7], [float("nan")] * 4, [0.0, 0.0, 1.0, 1.0], [0.1, 0.1, 0.2, 0.2]])
    out = net(x, known_boxes=known, return_features=True)
    b = out["boxes"]
    assert torch.allclose(b[0], torch.tensor([0.4, 0.3, 0.5]))  # centre of the box, crop_fraction side
    assert torch.allclose(b[2], torch.tensor([0.0, 0.0, 1.0]))  # a whole-slice box: the whole slice
    assert float(b[1, 2]) == 0.5  # unknown: the CAM peak rule
    crop = TwoBranchNet.crop(x, torch.tensor([[0.0, 0.0, 1.0]] * 4))
    assert torch.allclose(crop, x, atol=1e-5)  # the identity crop returns the slice


def test_tumour_boxes_are_mapped_into_the_prepared_slice():
    from brainspineai.classification.data import load_labelled_split

    need(FIGSHARE)
    data = load_labelled_split(FIGSHARE, 64, 0.2, 0, limit_per_class=5, boxes_csv=FIGSHARE / "tumor_boxes.csv")
    b = data.boxes.numpy()
    assert np.isfinite(b).all()  # every figshare slice has a box
    assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1]) and b.min() >= 0 and b.max() <= 1
    # the tumour is brighter than the slice on T1c: mean inside the box exceeds the slice mean
    brighter = []
    for img, (x0, y0, x1, y1) in zip(data.x[:, 0].numpy(), b):
        r0, r1, c0, c1 = int(y0 * 64), int(np.ceil(y1 * 64)), int(x0 * 64), int(np.ceil(x1 * 64))
        brighter.append(img[r0:r1, c0:c1].mean() > img[img > 0.05].mean())
    assert np.mean(brighter) >= 0.7


def test_box_masks_survive_augmentation_as_boxes():
    from brainspineai.classification.affcl import box_masks, boxes_from_masks

    boxes = torch.tensor([[0.25, 0.5, 0.75, 0.875], [float("nan")] * 4])
    back = boxes_from_masks(box_masks(boxes, 64))
    assert torch.allclose(back[0], boxes[0]) and torch.isnan(back[1]).all()


# --- the SupCon memory queue -------------------------------------------------------------


def test_queue_fills_and_holds_labels():
    from brainspineai.classification.affcl import supcon_queue

    q = supcon_queue(proj_dim=8, queue_size=12, temperature=0.1)
    torch.manual_seed(0)
    seen = []
    for labels in ([0, 1, 2, 3, 0], [1, 1, 2, 2, 3], [3, 2, 1, 0, 0]):
        y = torch.tensor(labels)
        z = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
        loss = q(z, y)
        assert torch.isfinite(loss)
        seen.extend(labels)
    assert q.has_been_filled and q.queue_idx == 15 % 12
    expected = seen[12:] + seen[3:12]  # ring buffer: slots 0-2 overwritten by the third batch
    assert q.label_memory.tolist() == expected
    assert torch.allclose(q.embedding_memory.norm(dim=1), torch.ones(12))


def test_supcon_queue_pulls_same_class_together():
    """The loss is lower when embeddings cluster by label than when they are shuffled."""
    from brainspineai.classification.affcl import supcon_queue

    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 16), dim=1)
    y = torch.arange(4).repeat(8)
    z = torch.nn.functional.normalize(centres[y] + 0.1 * torch.randn(32, 16), dim=1)
    clustered = supcon_queue(16, 64)(z, y)
    shuffled = supcon_queue(16, 64)(z, y[torch.randperm(32)])
    assert float(clustered) < float(shuffled) - 0.5


# --- AFF-CL training ---------------------------------------------------------------------


@pytest.mark.slow
def test_affcl_training_loss_decreases_and_events(tiny_affcl):
    folder, events = tiny_affcl
    card = json.loads((folder / "model.json").read_text())
    hist = card["training"]["history"]
    assert len(hist) == 6 and hist[-1]["loss"] < hist[0]["loss"]
    kinds = {e["event"] for e in events}
    assert {"data", "epoch", "done"} <= kinds
    ep = [e for e in events if e["event"] == "epoch"][-1]
    assert {"epoch", "epochs", "step", "loss", "metrics", "eta_s"} <= set(ep)
    assert card["network"]["kind"] == "two-branch" and card["gradcam_layer"] == "global_branch"
    pm = card["metrics"]["validation"]["probability_metrics"]
    assert 0 <= pm["macro_auc"]["value"] <= 1
    ckpt = torch.load(folder.with_name(folder.name + ".work") / "last.pt", weights_only=False)
    assert ckpt["stateful"]["queue"]["has_been_filled"]
    assert set(ckpt["stateful"]["queue"]["label_memory"].tolist()) <= {0, 1, 2, 3}


class Stop(Exception):
    pass


@pytest.mark.slow
def test_affcl_checkpoint_resumes_to_the_same_state(tmp_path):
    from brainspineai.classification.affcl import AFFCLConfig, train_affcl
    from safetensors.torch import load_file

    cfg = AFFCLConfig(epochs=2, queue_size=32, limit_per_class=8, image_size=64, batch_size=8, device="cpu",
                      backbone="resnet10-w32")
    straight = train_affcl(need(KAGGLE), tmp_path / "straight", cfg)

    def stop_after_first_epoch(event):
        if event["event"] == "epoch" and event["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train_affcl(need(KAGGLE), tmp_path / "resumed", cfg, progress=stop_after_first_epoch)
    assert not (tmp_path / "resumed").exists()  # nothing half-written
    events = []
    resumed = train_affcl(need(KAGGLE), tmp_path / "resumed", cfg, resume=True, progress=events.append)
    assert events[1] == {"event": "resume", "pipeline": "affcl", "epoch": 1}
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5), k
    qa = torch.load(straight.with_name("straight.work") / "last.pt", weights_only=False)["stateful"]["queue"]
    qb = torch.load(resumed.with_name("resumed.work") / "last.pt", weights_only=False)["stateful"]["queue"]
    assert torch.equal(qa["label_memory"], qb["label_memory"]) and qa["queue_idx"] == qb["queue_idx"]
    assert torch.allclose(qa["embedding_memory"], qb["embedding_memory"], atol=1e-5)


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(tmp_path):
    from brainspineai.classification.affcl import AFFCLConfig, train_affcl
    from brainspineai.errors import InputError

    cfg = AFFCLConfig(epochs=1, queue_size=16, limit_per_class=4, image_size=64, batch_size=8, device="cpu",
                      backbone="resnet10-w32")
    train_affcl(need(KAGGLE), tmp_path / "m", cfg)
    with pytest.raises(InputError, match="supcon_weight"):
        train_affcl(need(KAGGLE), tmp_path / "m", AFFCLConfig(**{**cfg.__dict__, "supcon_weight": 0.0}), resume=True)


@pytest.mark.parametrize("backbone", ["resnet18-w32", "mobilenet_v3_small", "efficientnet_b0", "vit-tiny"])
def test_every_backbone_builds_a_two_branch_model(backbone):
    from brainspineai.classification.networks import TwoBranchNet

    x, _ = real_batch(1)
    net = TwoBranchNet(backbone, 4, 64, proj_dim=16).eval()
    with torch.no_grad():
        out = net(x, return_features=True)
    assert out["logits"].shape == (4, 4) and out["projection"].shape == (4, 16)
    assert torch.allclose(out["projection"].norm(dim=1), torch.ones(4), atol=1e-5)


def test_unknown_backbone_and_bad_vit_size():
    from brainspineai.classification.backbones import build_backbone
    from brainspineai.errors import ModelError

    with pytest.raises(ModelError, match="unknown backbone 'resnet99'"):
        build_backbone("resnet99", 64)
    with pytest.raises(ModelError, match="multiple of 16"):
        build_backbone("vit-tiny", 100)


def test_affcl_model_classifies_with_gradcam_through_the_cli(tiny_affcl, tmp_path):
    import cv2

    folder, _ = tiny_affcl
    img = sorted((need(KAGGLE) / "glioma").iterdir())[0]
    r = run_cli("classify", img, "--model", folder, "--heatmap", tmp_path / "h.png", "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["model"] == "tiny-affcl" and abs(sum(doc["probabilities"]) - 1) < 1e-5
    heat = cv2.imread(str(tmp_path / "h.png"))
    assert heat.shape[:2] == cv2.imread(str(img), cv2.IMREAD_GRAYSCALE).shape


def test_affcl_gradcam_maps_on_the_global_branch(tiny_affcl):
    from brainspineai.catalogue import load_model
    from brainspineai.classification.explain import gradcam_batch

    model = load_model(tiny_affcl[0], "cpu")
    x, _ = real_batch(1)
    maps = gradcam_batch(model, x, 0)
    assert maps.shape == (4, 64, 64) and np.isfinite(maps).all() and maps.min() >= 0
    assert maps.reshape(4, -1).max(1).min() > 0  # a map for every slice


# --- SimCLR pre-training and fine-tuning -------------------------------------------------


def test_simclr_views_are_random_and_keep_shape():
    from brainspineai.classification.simclr import simclr_views

    x, _ = real_batch(2)
    g = torch.Generator().manual_seed(0)
    a, b = simclr_views(x, g), simclr_views(x, g)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert float((a - b).abs().mean()) > 0.02  # two different views
    # transforms are drawn per slice, not once per batch: copies of one slice differ
    same = x[:1].repeat(8, 1, 1, 1)
    v = simclr_views(same, g)
    assert float(torch.pdist(v.flatten(1)).min()) > 0.5


@pytest.mark.slow
def test_simclr_loss_decreases_and_saves_an_encoder(tiny_encoder):
    folder, events = tiny_encoder
    card = json.loads((folder / "model.json").read_text())
    hist = [h["loss"] for h in card["training"]["history"]]
    assert card["task"] == "encoder-2d" and len(hist) == 8
    assert np.mean(hist[-2:]) < hist[0] - 0.05, hist  # NT-Xent falls from about log(2B - 1)
    assert hist[0] < np.log(2 * 16 - 1) + 0.3
    split = json.loads((folder / "split.json").read_text())
    assert not set(split["validation"]) & set(split["train"])
    assert 0 <= card["metrics"]["monitor"]["knn_val_accuracy"] <= 1


def test_finetune_from_encoder_frozen_keeps_the_encoder(tiny_encoder, tmp_path):
    from brainspineai.catalogue import load_model
    from brainspineai.classification.simclr import FinetuneConfig, train_finetune
    from safetensors.torch import load_file

    enc_folder, _ = tiny_encoder
    cfg = FinetuneConfig(encoder=str(enc_folder), freeze_encoder=True, label_fraction=0.5, epochs=2, batch_size=8,
                         limit_per_class=12, device="cpu")
    folder = train_finetune(need(KAGGLE), tmp_path / "ft", cfg)
    card = json.loads((folder / "model.json").read_text())
    assert card["pretraining"]["encoder"] == "tiny-simclr" and card["labels"]["n_labelled"] == 20
    enc = load_file(enc_folder / "model.safetensors")
    ft = load_file(folder / "model.safetensors")
    for k, v in enc.items():
        if k.startswith("backbone."):
            assert torch.equal(v, ft[k]), k  # frozen: weights and BN statistics untouched
    model = load_model(folder, "cpu")  # a normal classifier for classify / Slicer
    assert model.class_names == ["glioma", "meningioma", "notumor", "pituitary"]


def test_labelled_subset_is_stratified_and_seeded():
    from brainspineai.classification.simclr import labelled_subset

    labels = np.repeat(np.arange(4), 100)
    idx = np.arange(400)
    a, b = labelled_subset(labels, idx, 0.1, 0), labelled_subset(labels, idx, 0.1, 0)
    assert np.array_equal(a, b) and len(a) == 40
    assert np.bincount(labels[a]).tolist() == [10, 10, 10, 10]


def test_encoder_and_classifier_are_not_interchangeable(tiny_encoder, tmp_path):
    enc_folder, _ = tiny_encoder
    img = sorted((need(KAGGLE) / "glioma").iterdir())[0]
    r = run_cli("classify", img, "--model", enc_folder)
    assert r.returncode == 2 and "encoder-2d model, not a 2D classifier" in r.stderr
    r = run_cli("train", "finetune", "--data", KAGGLE, "--out", tmp_path / "x", "--encoder",
                "brain-tumor-4class-resnet18w32", "--epochs", "1")
    assert r.returncode == 2 and "not a self-supervised 2D encoder" in r.stderr
    assert not (tmp_path / "x").exists()


def test_encoder_pretrained_on_validation_images_is_refused(tiny_encoder, tmp_path):
    from brainspineai.errors import InputError
    from brainspineai.classification.simclr import FinetuneConfig, train_finetune

    cfg = FinetuneConfig(encoder=str(tiny_encoder[0]), epochs=1, limit_per_class=12, val_fraction=0.3, seed=1,
                         device="cpu")
    with pytest.raises(InputError, match="validation images"):
        train_finetune(need(KAGGLE), tmp_path / "ft", cfg)


@pytest.mark.slow
def test_affcl_trains_in_two_ddp_processes_under_torchrun(tmp_path):
    """Several processes through torchrun / DDP (gloo on the CPU here, NCCL on GPUs)."""
    import os
    import sys

    from conftest import LIB_PARENT

    import socket

    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(LIB_PARENT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "brainspineai", "train", "affcl", "--data", str(need(KAGGLE)), "--out", str(tmp_path / "m"),
           "--limit-per-class", "8", "--image-size", "64", "--epochs", "2", "--batch-size", "4", "--device", "cpu",
           "--backbone", "resnet10-w32", "--queue-size", "16", "--events", str(tmp_path / "ev.jsonl")]
    import prewarmed
    r = prewarmed.run(cmd, capture_output=True, text=True, env=env, timeout=600)  # torchrun and its workers forked
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["training"]["processes"] == 2 and len(card["training"]["history"]) == 2
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]  # one reporter, not two
    assert r.stdout.count("model written to") == 1


@pytest.mark.parametrize("args, message", [
    (["train", "affcl", "--crop-fraction", "2"], "--crop-fraction 2.0: must be between 0.1 and 1"),
    (["train", "affcl", "--queue-size", "8"], "--queue-size 8: must be at least one batch"),
    (["train", "affcl", "--batch-size", "1"], "--batch-size 1: must be >= 2"),
    (["train", "affcl", "--backbone", "vit-tiny", "--image-size", "100"], "multiple of 16"),
    (["train", "simclr", "--temperature", "0"], "--temperature 0.0: must be > 0"),
    (["train", "finetune", "--label-fraction", "0"], "--label-fraction 0.0: must be in (0, 1]"),
])
def test_bad_training_options_exit_2_with_the_option_named(tmp_path, args, message):
    r = run_cli(*args, "--data", need(KAGGLE), "--out", tmp_path / "m", "--epochs", "1", "--limit-per-class", "4")
    assert r.returncode == 2, r.stderr[-2000:]
    assert message in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "m").exists()
