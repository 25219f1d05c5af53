"""SICF (LO-RF, Shi et al. 2025) for spinal tumour slices: quadrant ROI (:mod:`.roi`), SIFT bag
of words and CNN features (:mod:`.features`), Lyrebird feature selection (:mod:`.lyrebird`)
around a random forest (:mod:`.forest`), the model folder (:mod:`.model`), training and the
ablation (:mod:`.pipeline`, options in :mod:`.config`) and inference (:mod:`.inference`)."""
from ..catalogue import register_loader


def _load_sicf_model(folder, card, device):
    from .model import load_sicf_model

    return load_sicf_model(folder, card, device)


register_loader("sicf-2d", _load_sicf_model, serves=("classification-2d",))
