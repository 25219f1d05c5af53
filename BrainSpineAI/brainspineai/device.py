"""Choosing the compute device and the mixed-precision settings."""
from __future__ import annotations

from .errors import BrainSpineAIError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto"):
    """Return a ``torch.device``: for ``auto`` CUDA, then Apple MPS, then the CPU.

    :param name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    :raises BrainSpineAIError: for an unknown name or a device that is not available.
    """
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BrainSpineAIError(f"device '{name}' was asked for but CUDA is not available on this machine")
        return torch.device(name)
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise BrainSpineAIError("device 'mps' was asked for but Apple MPS is not available on this machine")
        return torch.device("mps")
    raise BrainSpineAIError(f"unknown device '{name}'; choose one of {', '.join(DEVICE_CHOICES)}")


def autocast(device):
    """Mixed-precision context for ``device``: float16 autocast on CUDA (bfloat16 where the
    GPU supports it), a no-op elsewhere."""
    import contextlib

    import torch

    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
