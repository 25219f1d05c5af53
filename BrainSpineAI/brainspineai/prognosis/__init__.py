"""Prognosis of lower-grade glioma from MRI: the clinical table and patient folders
(:mod:`.data`), pyradiomics features of the tumour (:mod:`.features`), Cox and grade models
as plain numbers with the survival metrics (:mod:`.survival`), the cross-validated study and
ablation against age alone (:mod:`.study`), training and the model folder (:mod:`.training`,
:mod:`.model`). Registers the loader of model cards of task ``prognosis``."""
from ..catalogue import register_loader


def _load_prognosis_model(folder, card, device):
    from .model import load_prognosis_model

    return load_prognosis_model(folder, card, device)


register_loader("prognosis", _load_prognosis_model)
