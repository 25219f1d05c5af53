"""2D tumour classification: slice data, networks and backbones, supervised training,
AFF-CL, SimCLR / fine-tuning, inference and Grad-CAM."""
from ..catalogue import register_loader


def _load_network_model(folder, card, device):
    from .networks import load_network_model

    return load_network_model(folder, card, device)


def _load_sequence_model(folder, card, device):
    from .sequence import load_sequence_model

    return load_sequence_model(folder, card, device)


register_loader("classification-2d", _load_network_model)
register_loader("sequence-2d", _load_sequence_model)
register_loader("encoder-2d", _load_network_model)
