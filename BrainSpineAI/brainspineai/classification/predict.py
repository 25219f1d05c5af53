"""Batched softmax prediction of a 2D classifier, shared by inference, evaluation and the
training pipelines (so that inference does not depend on training code)."""
from __future__ import annotations

import numpy as np


def predict_batches(network, x, device, batch_size: int = 128):
    """Softmax probabilities of ``network`` for a prepared batch.

    :param network: a classifier returning logits (N, C); put in eval mode here.
    :param x: float32 tensor (N, 1, H, W) in [0, 1] (see :mod:`brainspineai.classification.preprocess`).
    :param device: ``torch.device`` to run on (autocast on CUDA, see :func:`brainspineai.device.autocast`).
    :returns: float32 numpy array (N, C) (``(0, 0)`` for an empty batch).
    """
    import torch

    from ..device import autocast

    network.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            with autocast(device):
                logits = network(x[i:i + batch_size].to(device))
            outs.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)
