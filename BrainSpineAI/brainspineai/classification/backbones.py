"""Backbones: 2D networks that map a batch of slices to a feature map.

Every backbone maps a float32 batch (N, in_channels, S, S) to a feature map
(N, ``out_channels``, S / stride, S / stride); the map is what Grad-CAM explains, what
the AFF module fuses (see :mod:`brainspineai.classification.fusion`) and what is average-pooled into the
embedding.

=======================  =======================================================  ========  ======
name                     network                                                  channels  stride
=======================  =======================================================  ========  ======
``resnet18-w32``         MONAI ResNet-18 (He et al. 2016), half width (32-256)    256       32
``resnet18``             MONAI ResNet-18, usual width (64-512)                    512       32
``resnet10-w32``         MONAI ResNet-10, half width                              256       32
``mobilenet_v3_small``   torchvision MobileNetV3-Small (Howard et al. 2019)       576       32
``efficientnet_b0``      torchvision EfficientNet-B0 (Tan and Le 2019)            1280      32
``vit-tiny``             torchvision ViT (Dosovitskiy et al. 2021): patch 16,     192       16
                         width 192, 3 heads, 6 layers (half of ViT-Ti's depth);
                         patch tokens reshaped into a map
=======================  =======================================================  ========  ======

All are trained from scratch (no download); the first convolution takes ``in_channels``
(1 for MRI). The ViT's position embedding is tied to the input side, which must be a
multiple of 16.
"""
from __future__ import annotations

from ..errors import ModelError

RESNETS = {
    "resnet18-w32": dict(layers=[2, 2, 2, 2], block_inplanes=[32, 64, 128, 256]),
    "resnet18": dict(layers=[2, 2, 2, 2], block_inplanes=[64, 128, 256, 512]),
    "resnet10-w32": dict(layers=[1, 1, 1, 1], block_inplanes=[32, 64, 128, 256]),
}
BACKBONES = tuple(RESNETS) + ("mobilenet_v3_small", "efficientnet_b0", "vit-tiny")


def _torch_nn():
    import torch.nn as nn

    return nn


def build_backbone(name: str, image_size: int, in_channels: int = 1):
    """Build an untrained backbone (a ``torch.nn.Module`` with ``out_channels``).

    :param name: one of :data:`BACKBONES`.
    :param image_size: input side in pixels (used by the ViT's position embedding).
    :param in_channels: image channels.
    :raises ModelError: unknown name, or a ViT input side that is not a multiple of 16.
    """
    if name not in BACKBONES:
        raise ModelError(f"unknown backbone '{name}'; known: {', '.join(BACKBONES)}")
    if name in RESNETS:
        return ResNetTrunk(name, in_channels)
    if name == "vit-tiny":
        if image_size % 16:
            raise ModelError(f"backbone vit-tiny needs an input side that is a multiple of 16, got {image_size}")
        return ViTTrunk(image_size, in_channels)
    return TorchvisionTrunk(name, in_channels)


class ResNetTrunk(_torch_nn().Module):
    """MONAI ResNet without its pooling and classifier: stem, layer1-4."""

    def __init__(self, name: str, in_channels: int = 1):
        super().__init__()
        from monai.networks.nets import ResNet

        cfg = RESNETS[name]
        net = ResNet(block="basic", layers=cfg["layers"], block_inplanes=cfg["block_inplanes"], spatial_dims=2,
                     n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2, feed_forward=False)
        self.conv1, self.bn1, self.act, self.maxpool = net.conv1, net.bn1, net.act, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = cfg["block_inplanes"][-1]

    def forward(self, x):
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class TorchvisionTrunk(_torch_nn().Module):
    """The ``features`` part of a torchvision CNN, first convolution re-made for ``in_channels``."""

    def __init__(self, name: str, in_channels: int = 1):
        super().__init__()
        import torch.nn as nn
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
        first = net.features[0][0]
        net.features[0][0] = nn.Conv2d(in_channels, first.out_channels, first.kernel_size, first.stride,
                                       first.padding, bias=first.bias is not None)
        self.features = net.features
        self.out_channels = net.features[-1][0].out_channels

    def forward(self, x):
        return self.features(x)


class ViTTrunk(_torch_nn().Module):
    """torchvision VisionTransformer; the patch tokens (class token dropped) as a map."""

    def __init__(self, image_size: int, in_channels: int = 1, patch: int = 16, width: int = 192,
                 heads: int = 3, layers: int = 6):
        super().__init__()
        import torch.nn as nn
        from torchvision.models.vision_transformer import VisionTransformer

        vit = VisionTransformer(image_size=image_size, patch_size=patch, num_layers=layers, num_heads=heads,
                                hidden_dim=width, mlp_dim=4 * width)
        vit.conv_proj = nn.Conv2d(in_channels, width, kernel_size=patch, stride=patch)
        vit.heads = nn.Identity()
        self.vit = vit
        self.grid = image_size // patch
        self.out_channels = width

    def forward(self, x):
        import torch

        v = self.vit
        tokens = v._process_input(x)
        cls = v.class_token.expand(tokens.shape[0], -1, -1)
        tokens = v.encoder(torch.cat([cls, tokens], dim=1))[:, 1:]
        return tokens.transpose(1, 2).reshape(x.shape[0], self.out_channels, self.grid, self.grid)
