"""The model catalogue: every model is a folder holding ``model.safetensors`` (weights)
and ``model.json`` (the model card).

Model card fields (JSON object):
  ``id`` (str), ``version`` (int), ``task`` (``"classification-2d"``), ``architecture``
  (name in :data:`brainspineai.classification.networks.ARCHITECTURES`), ``class_names`` (list of str, in
  logit order), ``input_size`` ([rows, cols] pixels), ``in_channels`` (int),
  ``intensity_normalisation`` (dict, see :mod:`brainspineai.classification.preprocess`), ``gradcam_layer``,
  ``training_data`` (dict), ``metrics`` (dict, measured on data the training never saw),
  ``weights`` (file name), ``sha256`` (hex digest of the weights file), ``created`` (ISO 8601).

Where models are found, in order, by id: the folders in ``BRAINSPINEAI_MODEL_PATH``
(``os.pathsep``-separated), the user catalogue ``$BRAINSPINEAI_HOME/models`` (default
``~/.brainspineai/models``), and the models shipped inside the package (``zoo/``).
A reference may also be a model folder's path, or an ``http(s)://`` or ``file://`` URL of a
model folder: its card and weights are downloaded to ``$BRAINSPINEAI_HOME/cache`` and the
weights' sha256 is checked against the card before anything is used.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ChecksumError, ModelError

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
DEFAULT_MODEL_ID = "brain-tumor-4class-resnet18w32"
DEFAULT_SEGMENTER_ID = "brats-flair-t1ce-clipunet3d"  # task "segmentation-3d", see brainspineai.segmentation.inference
REQUIRED_FIELDS = ("id", "task", "architecture", "class_names", "input_size", "sha256", "weights")
ZOO_DIR = Path(__file__).resolve().parent / "zoo"


def user_home() -> Path:
    """Per-user folder for the catalogue and the download cache."""
    return Path(os.environ.get("BRAINSPINEAI_HOME", Path.home() / ".brainspineai"))


def search_roots() -> list[Path]:
    """Folders whose sub-folders are model folders, in lookup order."""
    roots = [Path(p) for p in os.environ.get("BRAINSPINEAI_MODEL_PATH", "").split(os.pathsep) if p]
    roots += [user_home() / "models", ZOO_DIR]
    return roots


def _make_temp_dir(prefix: str, parent: Path) -> Path:
    """A temporary folder beside its final place, with the permissions a plain mkdir gives
    (``tempfile.mkdtemp`` makes it private, which the renamed model folder must not stay)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def sha256_file(path) -> str:
    """Hex sha256 digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_card(folder) -> dict:
    """Read and check a model card.

    :raises ModelError: the card is missing, not JSON, or lacks a required field.
    """
    folder = Path(folder)
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise ModelError(f"{folder}: not a model folder (no {CARD_NAME})")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{card_path}: model card is not valid JSON ({exc})") from None
    if not isinstance(card, dict):
        raise ModelError(f"{card_path}: model card must be a JSON object")
    missing = [f for f in REQUIRED_FIELDS if f not in card]
    if missing:
        raise ModelError(f"{card_path}: model card lacks {', '.join(missing)}")
    return card


def list_models() -> list[dict]:
    """Cards of every model found in :func:`search_roots` (first occurrence of an id wins),
    each with an added ``"path"`` key."""
    seen, out = set(), []
    for root in search_roots():
        if not root.is_dir():
            continue
        for sub in sorted(root.iterdir()):
            if not (sub / CARD_NAME).is_file():
                continue
            try:
                card = read_card(sub)
            except ModelError:
                continue
            if card["id"] in seen:
                continue
            seen.add(card["id"])
            out.append({**card, "path": str(sub)})
    return out


def resolve_model(ref: str | os.PathLike | None = None) -> Path:
    """Find the folder of a model given by id, folder path or URL (``None``: the default).

    :raises ModelError: unknown id, or a path that is not a model folder.
    """
    ref = DEFAULT_MODEL_ID if ref is None or str(ref) == "" else str(ref)
    if ref.startswith(("http://", "https://", "file://")):
        return fetch_remote(ref)
    p = Path(ref).expanduser()
    if p.exists():
        if p.is_file() and p.name in (CARD_NAME, WEIGHTS_NAME):
            p = p.parent
        if not (p / CARD_NAME).is_file():
            raise ModelError(f"{ref}: not a model folder (no {CARD_NAME})")
        return p
    for root in search_roots():
        cand = root / ref
        if (cand / CARD_NAME).is_file():
            return cand
    for card in list_models():
        if card["id"] == ref:
            return Path(card["path"])
    known = ", ".join(c["id"] for c in list_models()) or "none"
    raise ModelError(f"unknown model '{ref}' (not an id in the catalogue, a model folder or a URL); known models: {known}")


def verify_weights(folder, card: dict) -> Path:
    """Check that the weights file exists and matches the card's sha256.

    :raises ModelError: missing weights. :raises ChecksumError: digest mismatch.
    """
    weights = Path(folder) / card["weights"]
    if not weights.is_file():
        raise ModelError(f"{folder}: weights file {card['weights']} is missing")
    digest = sha256_file(weights)
    if digest != card["sha256"]:
        raise ChecksumError(
            f"{weights}: checksum mismatch (sha256 {digest[:12]}..., model card says {str(card['sha256'])[:12]}...); "
            "the weights are corrupted or were replaced")
    return weights


def fetch_remote(url: str) -> Path:
    """Download a model folder (``model.json`` then its weights) from ``url`` into the
    per-user cache, verify the weights' sha256 against the card, and return the folder.
    A complete earlier download with a matching checksum is reused.

    :raises ModelError: the download fails or the card is invalid.
    :raises ChecksumError: the downloaded weights do not match the card.
    """
    import urllib.error
    import urllib.request

    base = url.rstrip("/")
    if base.endswith("/" + CARD_NAME):
        base = base[: -len(CARD_NAME) - 1]
    cache_root = user_home() / "cache"
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = _make_temp_dir(".download-", cache_root)
    try:
        try:
            with urllib.request.urlopen(f"{base}/{CARD_NAME}", timeout=60) as r:
                (tmp / CARD_NAME).write_bytes(r.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ModelError(f"could not download the model card from {base}/{CARD_NAME}: {exc}") from None
        card = read_card(tmp)
        final = cache_root / f"{card['id']}-{str(card['sha256'])[:12]}"
        if (final / CARD_NAME).is_file():
            try:
                verify_weights(final, read_card(final))
                return final
            except ModelError:
                shutil.rmtree(final, ignore_errors=True)
        try:
            with urllib.request.urlopen(f"{base}/{card['weights']}", timeout=600) as r, \
                    open(tmp / card["weights"], "wb") as fh:
                shutil.copyfileobj(r, fh, 1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ModelError(f"could not download the weights from {base}/{card['weights']}: {exc}") from None
        verify_weights(tmp, card)
        os.replace(tmp, final)
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class LoadedModel:
    """A verified model ready for inference.

    ``network`` is in eval mode on ``device``; ``class_names`` are in logit order.
    """

    card: dict
    folder: Path
    network: object
    device: object
    class_names: list = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.card["id"]

    @property
    def input_size(self) -> int:
        return int(self.card["input_size"][0])


# Model loaders by card task, filled by the capability packages when they are imported
# (``brainspineai.classification`` registers "classification-2d" and "encoder-2d",
# ``brainspineai.sicf`` "sicf-2d", ``brainspineai.segmentation`` "segmentation-3d"): the
# catalogue itself imports no pipeline.
_LOADERS: dict = {}


def register_loader(task: str, loader, serves=()) -> None:
    """Register ``loader(folder: Path, card: dict, device: str)`` for model cards of ``task``.

    :param serves: other requested tasks this kind of model can stand in for (an SICF model
        of task ``sicf-2d`` serves a request for a ``classification-2d`` classifier).
    """
    _LOADERS[task] = (loader, (task, *serves))


def _discover_capabilities() -> None:
    """Import every capability package of ``brainspineai`` (the sub-packages), so each
    registers its loaders. Their ``__init__`` modules are light (no torch)."""
    import importlib
    import pkgutil

    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules([str(Path(__file__).resolve().parent)]):
        if info.ispkg and info.name not in ("cli", "zoo"):
            importlib.import_module(f"{package}.{info.name}")


def load_model(ref=None, device="auto", task: str = "classification-2d"):
    """Resolve, verify and load a model with the loader its card's task registered.

    :param ref: model id, model folder, URL, or ``None`` for :data:`DEFAULT_MODEL_ID`.
    :param device: ``auto``, ``cpu``, ``cuda`` or ``mps`` (see :func:`brainspineai.device.resolve_device`).
    :param task: the card's task that the caller needs: ``classification-2d`` (a classifier)
        or ``encoder-2d`` (a self-supervised encoder, see :mod:`brainspineai.classification.simclr`).
        A classifier of task ``sicf-2d`` loads as a :class:`brainspineai.sicf.model.SICFModel`
        (``kind == "sicf"``, no ``network``), which callers dispatch on.
    :returns: a :class:`LoadedModel` (networks) or the capability's own model object.
    :raises ModelError, ChecksumError: unknown, incomplete, corrupted or incompatible model,
        or a model of another task.
    """
    folder = resolve_model(ref)
    card = read_card(folder)
    if card["task"] not in _LOADERS:
        _discover_capabilities()
    entry = _LOADERS.get(card["task"])
    if entry is None or task not in entry[1]:
        kinds = {"classification-2d": "a 2D classifier", "encoder-2d": "a self-supervised 2D encoder"}
        raise ModelError(f"model '{card['id']}' is a {card['task']} model, not {kinds.get(task, task)}")
    return entry[0](folder, card, device)


def write_model_folder(out_dir, card: dict, write_files, extra_files: dict | None = None) -> Path:
    """Write a model folder atomically: ``write_files(tmp)`` writes the model's files into a
    temporary sibling folder and returns the card fields they determine (e.g. ``weights``,
    ``sha256``); the card (``created`` filled in) and ``extra_files`` (file name -> text, e.g.
    ``split.json``) are written beside them, then the folder replaces ``out_dir``. An existing
    model there stays intact until the new one is complete; on any error nothing is left.

    :returns: the model folder.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_temp_dir(f".{out_dir.name}.", out_dir.parent)
    try:
        card = dict(card)
        card.update(write_files(tmp))
        card.setdefault("created", _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat())
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        mode = 0o666 & ~_umask()
        for f in tmp.iterdir():
            os.chmod(f, mode)  # safetensors writes its file private
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.rmdir(old)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
        return out_dir
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_model(network, card: dict, out_dir, extra_files: dict | None = None) -> Path:
    """Write a model folder atomically (:func:`write_model_folder`): ``model.safetensors``
    and the card, with ``sha256``, ``weights`` and ``created`` filled in.
    ``extra_files`` maps file names to text written beside them (e.g. ``split.json``).

    :returns: the model folder.
    """
    from safetensors.torch import save_file

    def write_weights(tmp: Path) -> dict:
        state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME))
        return {"weights": WEIGHTS_NAME, "sha256": sha256_file(tmp / WEIGHTS_NAME)}

    return write_model_folder(out_dir, card, write_weights, extra_files)
