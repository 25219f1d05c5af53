"""3D segmentation of BraTS regions (ET / TC / WT): data layouts, preparation, the
CLIP-guided 3D U-Net, training and inference."""
from ..catalogue import register_loader


def _load_segmenter(folder, card, device):
    from .inference import load_segmenter

    return load_segmenter(folder, device)


register_loader("segmentation-3d", _load_segmenter)
