"""SICF (LO-RF, Shi et al. 2025) for spinal tumour slices: quadrant ROI, SIFT bag of words and
CNN features, Lyrebird feature selection around a random forest."""
from ..catalogue import register_loader


def _load_sicf_model(folder, card, device):
    from .pipeline import load_sicf_model

    return load_sicf_model(folder, card, device)


register_loader("sicf-2d", _load_sicf_model, serves=("classification-2d",))
