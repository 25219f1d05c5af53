"""The SICF model folder (task ``sicf-2d``): :class:`SICFModel`, :func:`save_sicf_model`,
:func:`load_sicf_model`, and :func:`load_sicf_parent` (the model a retraining run starts from).

Folder: ``model.json`` (card), ``forest.skops`` (the random forest in skops' format, which
cannot run code when loaded: :func:`skops.io.load` with the explicit list
:data:`TRUSTED_TYPES`), ``codebook.npy`` (float32 (n_words, 128)), ``feature_mask.npy``
(bool (n_words + CNN features: 4096 for VGG16, 1280 for EfficientNet-Lite0,)), ``split.json``. The card's ``weights`` names the forest and
``sha256`` is its digest; ``files`` maps every model file (forest, codebook, mask) to its
sha256, so a download can fetch and check each. Every digest is checked before a file is read.

Folders written before skops hold ``forest.joblib``, a pickle: loading one can run any code
its author put there, and the card's sha256 (from the same author) protects nothing. Such a
folder is refused unless the user trusts it explicitly: ``load_sicf_model(...,
trust_pickle=True)``, the command-line flag ``--trust-pickle`` (``classify``, ``evaluate``,
``train sicf --init-model``; :func:`trust_pickle_scope`), or ``BRAINSPINEAI_TRUST_PICKLE=1``
in the environment (3D Slicer). Retraining a trusted legacy model writes a ``forest.skops``.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError
from .config import INHERITED, SICFConfig
from .features import cnn_features

TASK = "sicf-2d"
FOREST_NAME = "forest.skops"
LEGACY_FOREST_NAME = "forest.joblib"
CODEBOOK_NAME = "codebook.npy"
MASK_NAME = "feature_mask.npy"
TRUST_PICKLE_ENV = "BRAINSPINEAI_TRUST_PICKLE"
# Every type a scikit-learn RandomForestClassifier is made of in a skops file; nothing else is
# trusted (skops refuses any other type that it does not trust by default).
TRUSTED_TYPES = (
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.int64",
    "numpy.float64",
    "builtins.dict",
    "builtins.list",
    "builtins.str",
    "builtins.tuple",
)

_TRUST_PICKLE = contextvars.ContextVar("brainspineai_sicf_trust_pickle", default=False)


@contextlib.contextmanager
def trust_pickle_scope(trust: bool = True):
    """Within the ``with`` block, :func:`load_sicf_model` accepts legacy pickled forests
    (how ``--trust-pickle`` reaches a model loaded through :func:`brainspineai.catalogue.load_model`)."""
    token = _TRUST_PICKLE.set(bool(trust))
    try:
        yield
    finally:
        _TRUST_PICKLE.reset(token)


def pickle_trusted(explicit: bool = False) -> bool:
    """Whether a legacy pickled forest may be loaded: ``explicit``, inside
    :func:`trust_pickle_scope`, or ``$BRAINSPINEAI_TRUST_PICKLE`` set to ``1`` / ``true`` / ``yes``."""
    env = os.environ.get(TRUST_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")
    return bool(explicit) or _TRUST_PICKLE.get() or env


@dataclass
class SICFModel:
    """A loaded SICF model: ``card``, ``folder``, ``class_names``, ``codebook`` float32
    (n_words, 128), ``mask`` bool (n_words + CNN dim,), ``forest`` (scikit-learn), ``vgg``
    (the CNN features, :func:`brainspineai.sicf.features.cnn_features`)."""

    card: dict
    folder: Path
    class_names: list
    codebook: np.ndarray
    mask: np.ndarray
    forest: object
    vgg: object
    device: str = "cpu"
    kind: str = "sicf"
    network: object = None

    @property
    def id(self) -> str:
        return self.card["id"]

    @property
    def input_size(self) -> int:
        return int(self.card["input_size"][0])

    @property
    def roi(self) -> str:
        return self.card["roi"]

    def config(self) -> SICFConfig:
        """The feature options of this model (ROI mode, image size, codebook size)."""
        return SICFConfig(roi=self.card["roi"], image_size=self.input_size, n_words=int(self.codebook.shape[0]))

    def predict_features(self, fused) -> np.ndarray:
        """Class probabilities float64 (N, C) of fused features (N, n_words + CNN dim)."""
        fused = np.asarray(fused, np.float32)
        probs = np.zeros((len(fused), len(self.class_names)))
        probs[:, self.forest.classes_] = self.forest.predict_proba(fused[:, self.mask])
        return probs



def _file_digests(folder: Path, names) -> dict:
    from ..catalogue import sha256_file

    return {n: sha256_file(folder / n) for n in names}


def save_sicf_model(out_dir, card: dict, forest, codebook, mask, extra_files: dict | None = None) -> Path:
    """Write an SICF model folder atomically (:func:`brainspineai.catalogue.write_model_folder`):
    the forest with :func:`skops.io.dump` as ``forest.skops``, ``codebook.npy`` and
    ``feature_mask.npy``. Fills ``weights`` (``forest.skops``), ``sha256`` (its digest),
    ``files`` (sha256 of every model file) and ``created``.

    :param forest: a fitted scikit-learn ``RandomForestClassifier``; ``codebook``: float32
        (n_words, 128); ``mask``: bool (n_words + CNN dim,).
    """
    import zipfile

    import skops.io as sio

    from ..catalogue import write_model_folder

    def write_files(tmp: Path) -> dict:
        sio.dump(forest, tmp / FOREST_NAME, compression=zipfile.ZIP_DEFLATED, compresslevel=6)
        np.save(tmp / CODEBOOK_NAME, np.asarray(codebook, np.float32), allow_pickle=False)
        np.save(tmp / MASK_NAME, np.asarray(mask, bool), allow_pickle=False)
        files = _file_digests(tmp, [FOREST_NAME, CODEBOOK_NAME, MASK_NAME])
        return {"weights": FOREST_NAME, "sha256": files[FOREST_NAME], "files": files}

    return write_model_folder(out_dir, card, write_files, extra_files)


def _refuse_pickle(folder: Path, card: dict) -> None:
    raise ModelError(f"model '{card.get('id')}' ({folder}) stores its forest as a pickle ({card['weights']}), which can "
                     "run any code when loaded; refused. Load it only if you trust where it came from: "
                     f"--trust-pickle (command line), {TRUST_PICKLE_ENV}=1 (3D Slicer) or "
                     "load_sicf_model(..., trust_pickle=True); retraining it (train sicf --init-model ... "
                     "--trust-pickle) writes a safe forest.skops")


def _read_forest(path: Path, legacy: bool):
    """The forest of a model folder (its digest already checked): skops with
    :data:`TRUSTED_TYPES`, or (legacy, trusted by the user) joblib."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    if legacy:
        import joblib

        forest = joblib.load(path)
    else:
        import skops.io as sio

        unexpected = sorted(set(sio.get_untrusted_types(file=path)) - set(TRUSTED_TYPES))
        if unexpected:
            shown = ", ".join(unexpected[:3]) + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else "")
            raise ModelError(f"{path.name} holds types a random forest does not need ({shown}); refused")
        forest = sio.load(path, trusted=list(TRUSTED_TYPES))
    if not isinstance(forest, RandomForestClassifier) or \
            not all(isinstance(t, DecisionTreeClassifier) for t in getattr(forest, "estimators_", [None])):
        raise ModelError(f"{path.name} does not hold a fitted random forest (found {type(forest).__name__})")
    return forest


def load_sicf_model(folder, card: dict | None = None, device: str = "cpu", vgg_weights: str = "",
                    trust_pickle: bool = False) -> SICFModel:
    """Load an SICF model folder, checking every file's sha256 against the card before
    reading it. The forest is read with skops (:data:`TRUSTED_TYPES` only); a legacy
    ``forest.joblib`` (a pickle) is refused unless trusted (:func:`pickle_trusted`:
    ``trust_pickle``, :func:`trust_pickle_scope` or ``$BRAINSPINEAI_TRUST_PICKLE``).

    :param device: where VGG16 runs (``auto`` = ``cpu``).
    :param vgg_weights: ImageNet VGG16 state dict, when the card says the model used one.
    :raises ModelError: not an SICF card, an untrusted pickle, a forest of another kind,
        missing file, or VGG16 weights that differ from the training ones.
    :raises ChecksumError: a file does not match the card.
    """
    from ..catalogue import read_card, verify_weights
    from ..errors import ChecksumError

    folder = Path(folder)
    card = card or read_card(folder)
    if card.get("task") != TASK:
        raise ModelError(f"model '{card.get('id')}' is a {card.get('task')} model, not an SICF model")
    weights = str(card.get("weights") or "")
    legacy = weights.endswith(".joblib")
    if not legacy and not weights.endswith(".skops"):
        raise ModelError(f"model '{card.get('id')}': weights '{weights}' is not an SICF forest (forest.skops)")
    if legacy and not pickle_trusted(trust_pickle):
        _refuse_pickle(folder, card)
    verify_weights(folder, card)  # the forest against card["sha256"]
    digests = card.get("files") or {}
    for name in (CODEBOOK_NAME, MASK_NAME):
        if not (folder / name).is_file():
            raise ModelError(f"{folder}: {name} is missing")
        if name not in digests:
            raise ModelError(f"{folder}: the model card lists no sha256 for {name}")
        got = _file_digests(folder, [name])[name]
        if got != digests[name]:
            raise ChecksumError(f"{folder / name}: checksum mismatch (sha256 {got[:12]}..., card says {digests[name][:12]}...)")
    try:
        forest = _read_forest(folder / weights, legacy)
        codebook = np.load(folder / CODEBOOK_NAME, allow_pickle=False)
        mask = np.load(folder / MASK_NAME, allow_pickle=False).astype(bool)
    except ModelError as exc:
        raise ModelError(f"model '{card['id']}': {exc}") from None
    except Exception as exc:  # noqa: BLE001 - skops / joblib / numpy raise several types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"model '{card['id']}': cannot read its files ({first})") from None
    vgg = cnn_features(weights=vgg_weights, device="cpu" if device == "auto" else device, provenance=card["vgg16"])
    if mask.shape != (codebook.shape[0] + vgg.dim,) or int(mask.sum()) != getattr(forest, "n_features_in_", -1):
        raise ModelError(f"model '{card['id']}': feature mask, codebook and forest do not fit together")
    return SICFModel(card=card, folder=folder, class_names=list(card["class_names"]), codebook=codebook, mask=mask,
                     forest=forest, vgg=vgg, device=vgg.device)


def load_sicf_parent(cfg: SICFConfig, class_names):
    """The SICF model a retraining run starts from (``cfg.init_model``), checked with
    :func:`brainspineai.retrain.load_parent` (task ``sicf-2d``, same class list) and loaded
    with :func:`load_sicf_model` (every file's sha256; VGG16 rebuilt from the card's
    provenance and checked against its fingerprint).

    :returns: ``(parent, model, cfg)``: :class:`brainspineai.retrain.Parent`,
        :class:`SICFModel` and ``cfg`` with the parent's ROI mode, image size, codebook size
        and feature blocks.
    :raises InputError: not an SICF model, other classes, an option (``--roi``,
        ``--image-size``, ``--words``) that differs from the parent's, VGG16 weights that
        cannot be reproduced, or a legacy pickled forest without ``cfg.trust_pickle`` (or
        ``$BRAINSPINEAI_TRUST_PICKLE``). :raises ModelError, ChecksumError: unknown or
        corrupted model.
    """
    from ..errors import ChecksumError
    from ..retrain import load_parent

    parent = load_parent(cfg.init_model, TASK, class_names)
    card = parent.card
    theirs = {"roi": card["roi"], "image_size": int(card["input_size"][0]), "n_words": int(card["n_words"])}
    for name, flag in INHERITED.items():
        given = getattr(cfg, name)
        if given is not None and given != theirs[name]:
            raise InputError(f"--init-model {cfg.init_model}: model '{parent.id}' was trained with {flag} "
                             f"{theirs[name]}, this run asks for {flag} {given}; retraining keeps the parent's "
                             f"features (leave {flag} out or give {theirs[name]})")
    cfg = replace(cfg, **theirs, blocks=tuple(card.get("feature_blocks") or cfg.blocks))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a random-init VGG16 is the parent's own, rebuilt from its seed
            model = load_sicf_model(parent.folder, card, vgg_weights=cfg.vgg_weights,
                                    trust_pickle=cfg.trust_pickle)
    except ChecksumError:
        raise
    except ModelError as exc:
        raise InputError(f"--init-model {cfg.init_model}: cannot reuse model '{parent.id}': {exc}") from None
    return parent, model, cfg
