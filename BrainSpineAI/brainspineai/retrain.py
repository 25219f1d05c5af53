"""Retraining: start a training run from a catalogue model's current weights and record
the new model as the next version of it.

Every training pipeline (``train classifier``, ``affcl``, ``simclr``, ``finetune``; the
segmenter and SICF through the same helpers) takes ``--init-model ID|DIR``:

- the parent model is resolved in the catalogue (:func:`catalogue.resolve_model`), its
  weights' sha256 is checked, and they are loaded into the freshly built network (same
  architecture, same input size, same class list in the same order, or an
  :class:`InputError` naming the difference);
- the new card gets ``version`` = parent version + 1, ``parent`` = the parent's id and
  ``lineage`` = the parent's lineage + [parent id]; its id is ``<base>-v<N>`` (``base`` =
  the parent id without a ``-v<k>`` suffix) unless ``--model-id`` is given;
- the parent's folder is never touched, so the previous version stays usable;
- the parent's validation images stay held out (:func:`keep_parent_split`), so the new
  version's validation figure is not measured on images its parent was trained on.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

_VERSION_SUFFIX = re.compile(r"-v\d+$")


@dataclass
class Parent:
    """The model a run starts from: its card (dict), folder and id."""

    card: dict
    folder: Path

    @property
    def id(self) -> str:
        return str(self.card["id"])

    @property
    def version(self) -> int:
        return int(self.card.get("version", 1) or 1)


def next_version_id(parent_id: str, version: int) -> str:
    """``<parent id without -v<k>>-v<version>``, e.g. ``('glioma-net-v2', 3) -> 'glioma-net-v3'``."""
    return f"{_VERSION_SUFFIX.sub('', parent_id)}-v{version}"


def load_parent(ref, task: str, class_names=None, input_size: int | None = None) -> Parent:
    """Resolve and check the model a run starts from.

    :param ref: model id, folder or URL (see :func:`catalogue.resolve_model`).
    :param task: the card task the pipeline produces (``classification-2d``, ``encoder-2d``,
        ``segmentation-3d``).
    :param class_names: the dataset's classes in logit order (None: not checked).
    :param input_size: the run's input side in pixels (None: not checked).
    :raises InputError: a model of another task, another class list or input size.
    :raises ModelError, ChecksumError: unknown model, corrupted weights.
    """
    from .catalogue import read_card, resolve_model, verify_weights

    folder = resolve_model(str(ref))
    card = read_card(folder)
    verify_weights(folder, card)
    if card["task"] != task:
        raise InputError(f"--init-model {ref}: model '{card['id']}' is a {card['task']} model; this pipeline "
                         f"trains {task} models")
    if class_names is not None and list(card.get("class_names") or []) != list(class_names):
        raise InputError(f"--init-model {ref}: model '{card['id']}' has classes {list(card['class_names'])}, the "
                         f"dataset has {list(class_names)}; retraining needs the same class folders")
    if input_size is not None and int(card["input_size"][0]) != int(input_size):
        raise InputError(f"--init-model {ref}: model '{card['id']}' takes {card['input_size'][0]} px inputs; "
                         f"give --image-size {card['input_size'][0]}")
    return Parent(card=card, folder=Path(folder))


def init_weights(network, parent: Parent) -> None:
    """Load the parent's weights into ``network`` (strict: every tensor must fit).

    :raises InputError: the parent's architecture differs from the one being trained.
    """
    from safetensors.torch import load_file

    state = load_file(str(parent.folder / parent.card["weights"]))
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"--init-model {parent.id}: its weights do not fit the network being trained "
                         f"(architecture {parent.card.get('architecture')}; {first}); use the same "
                         "architecture / backbone options as the parent") from None


def start_from(ref, network, task: str, class_names=None, input_size: int | None = None) -> Parent | None:
    """:func:`load_parent` then :func:`init_weights`; ``ref`` empty: nothing, returns None."""
    if not ref:
        return None
    parent = load_parent(ref, task, class_names, input_size)
    init_weights(network, parent)
    return parent


def keep_parent_split(parent: Parent | None, paths, root, train_idx, val_idx):
    """Re-assign a grown dataset's split so that the images the parent validated on stay in
    validation and those it trained on stay in training (matched by path relative to
    ``root``, as in the parent's ``split.json``); new images keep their own assignment.

    :returns: ``(train_idx, val_idx, n_kept)``: sorted int64 arrays and the number of the
        parent's validation images found here.
    """
    import numpy as np

    if parent is None or not (parent.folder / "split.json").is_file():
        return train_idx, val_idx, 0
    try:
        split = json.loads((parent.folder / "split.json").read_text(encoding="utf-8"))
        p_val, p_train = set(split.get("validation", [])), set(split.get("train", []))
    except (OSError, ValueError, AttributeError):
        return train_idx, val_idx, 0
    is_val = np.zeros(len(paths), dtype=bool)
    is_val[np.asarray(val_idx, dtype=np.int64)] = True
    kept = 0
    for i, p in enumerate(paths):
        try:
            rel = str(Path(p).relative_to(root))
        except ValueError:
            continue
        if rel in p_val:
            is_val[i] = True
            kept += 1
        elif rel in p_train:
            is_val[i] = False
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64), kept


def version_card(card: dict, parent: Parent | None, explicit_id: str = "", parent_validation_kept: int = 0) -> dict:
    """The card with ``version``, ``parent`` and ``lineage`` of a run started from
    ``parent`` (unchanged apart from ``lineage: []`` when ``parent`` is None).
    The id becomes :func:`next_version_id` unless ``explicit_id`` was given."""
    card = dict(card)
    if parent is None:
        card.setdefault("lineage", [])
        return card
    version = parent.version + 1
    card["version"] = version
    card["parent"] = parent.id
    card["lineage"] = list(parent.card.get("lineage") or []) + [parent.id]
    card["parent_sha256"] = parent.card.get("sha256")
    if isinstance(card.get("training_data"), dict):
        card["training_data"] = dict(card["training_data"], parent_validation_kept=parent_validation_kept)
    if not explicit_id:
        card["id"] = next_version_id(parent.id, version)
    return card
