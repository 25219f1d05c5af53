"""Classifier architectures, built by name from a model card.

``resnet18-w32``: MONAI's ResNet (He et al., CVPR 2016) with BasicBlocks [2, 2, 2, 2] at half
the usual width (32-64-128-256 channels), 2D, one input channel, stride-2 stem: 2.8 M
parameters, 11 MiB in float32. The default shipped model uses it.

``resnet18``: the same layout at the usual width (64-512 channels), 11.2 M parameters.

Every network exposes ``layer4`` (the last convolutional stage) as its Grad-CAM target
and maps a float32 batch (N, in_channels, H, W) to logits (N, num_classes).
"""
from __future__ import annotations

ARCHITECTURES = {
    "resnet18-w32": dict(block="basic", layers=[2, 2, 2, 2], block_inplanes=[32, 64, 128, 256]),
    "resnet18": dict(block="basic", layers=[2, 2, 2, 2], block_inplanes=[64, 128, 256, 512]),
    "resnet10-w32": dict(block="basic", layers=[1, 1, 1, 1], block_inplanes=[32, 64, 128, 256]),
}

GRADCAM_LAYER = "layer4"


def build_classifier(architecture: str, num_classes: int, in_channels: int = 1):
    """Build an untrained 2D classifier.

    :param architecture: one of :data:`ARCHITECTURES`.
    :param num_classes: number of output logits.
    :param in_channels: image channels (1 for grayscale MRI).
    :raises ModelError: for an unknown architecture name.
    """
    from monai.networks.nets import ResNet

    from .errors import ModelError

    if architecture not in ARCHITECTURES:
        raise ModelError(f"unknown architecture '{architecture}'; known: {', '.join(sorted(ARCHITECTURES))}")
    cfg = ARCHITECTURES[architecture]
    return ResNet(
        block=cfg["block"], layers=cfg["layers"], block_inplanes=cfg["block_inplanes"],
        spatial_dims=2, n_input_channels=in_channels, conv1_t_size=7, conv1_t_stride=2,
        num_classes=num_classes,
    )
