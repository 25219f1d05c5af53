"""Feature vectors of a classifier: the input of its final linear layer ``fc`` (the
penultimate representation, after global average pooling), for embedding plots."""
from __future__ import annotations

import numpy as np

from ..errors import ModelError


def penultimate_features(network, batch, device, batch_size: int = 128) -> np.ndarray:
    """The input of ``network.fc`` for every image of a prepared batch.

    A forward hook on ``network.fc`` captures what enters the layer while the network runs
    in eval mode under ``torch.no_grad`` (mixed precision on CUDA, as
    :func:`brainspineai.classification.predict.predict_batches`); the network's train / eval mode is
    restored afterwards and the hook removed.

    :param network: a classifier whose final layer is the ``torch.nn.Linear`` attribute
        ``fc`` (every classifier of this library, MONAI's ``ResNet``), on ``device``.
    :param batch: float32 tensor (N, in_channels, H, W), prepared as for inference
        (:func:`brainspineai.classification.data.load_slice_batch`).
    :param device: ``torch.device`` the network is on.
    :param batch_size: images per forward pass.
    :returns: float32 numpy array (N, D), D = ``network.fc.in_features`` (256 for
        ``resnet18-w32``).
    :raises ModelError: the network has no ``fc`` linear layer.
    :raises ValueError: ``batch`` is not a 4D tensor or ``batch_size`` < 1.
    """
    import torch

    from ..device import autocast

    fc = getattr(network, "fc", None)
    if not isinstance(fc, torch.nn.Linear):
        raise ModelError(f"{type(network).__name__} has no final linear layer 'fc'; cannot take penultimate features")
    x = torch.as_tensor(batch)
    if x.ndim != 4:
        raise ValueError(f"batch must be a 4D tensor (N, C, H, W); got shape {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    captured = []

    def hook(module, inputs):
        captured.append(inputs[0].detach().float().reshape(inputs[0].shape[0], -1).cpu())

    was_training = network.training
    handle = fc.register_forward_pre_hook(hook)
    try:
        network.eval()
        with torch.no_grad():
            for i in range(0, x.shape[0], batch_size):
                with autocast(device):
                    network(x[i:i + batch_size].to(device))
    finally:
        handle.remove()
        network.train(was_training)
    if not captured:
        return np.zeros((0, fc.in_features), dtype=np.float32)
    return torch.cat(captured).numpy().astype(np.float32, copy=False)
