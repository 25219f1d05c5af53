"""The model catalogue: every model is a folder holding ``model.safetensors`` (weights)
and ``model.json`` (the model card).

Model card fields (JSON object):
  ``id`` (str: letters, digits, ``.``, ``-``, ``_``), ``version`` (int), ``task``
  (``"classification-2d"``), ``architecture`` (name in
  :data:`brainspineai.classification.networks.ARCHITECTURES`), ``class_names`` (list of str, in
  logit order), ``input_size`` ([rows, cols] pixels), ``in_channels`` (int),
  ``intensity_normalisation`` (dict, see :mod:`brainspineai.classification.preprocess`), ``gradcam_layer``,
  ``training_data`` (dict), ``metrics`` (dict, measured on data the training never saw),
  ``weights`` (plain file name), ``sha256`` (hex digest of the weights file), ``files`` (optional:
  plain file name -> sha256 of every further file the model needs, e.g. an SICF model's codebook),
  ``sizes`` (optional: file name -> size in bytes, a download's cap), ``created`` (ISO 8601).

Where models are found, by id: the models shipped inside the package (``zoo/``) for a shipped
id, otherwise the folders in ``BRAINSPINEAI_MODEL_PATH`` (``os.pathsep``-separated), the user
catalogue ``$BRAINSPINEAI_HOME/models`` (default ``~/.brainspineai/models``), then ``zoo/``.
A reference may also be a model folder's path, or an ``http(s)://`` or ``file://`` URL of a
model folder: its card and files are downloaded to ``$BRAINSPINEAI_HOME/cache`` with the
checks of :mod:`brainspineai.download` (plain names, size caps, deadline, every sha256) before
anything is used.

Trust: the shipped models are pinned (``zoo/pins.json``: id -> sha256 of the card and of the
weights). A card carrying a shipped id anywhere (user catalogue, model path, a folder, a URL)
must be byte-identical to the shipped card, otherwise it is refused (:class:`ChecksumError`);
a user-catalogue or model-path folder with a shipped id is *shadowed*, never used for that id:
the shipped model wins, a warning says so, and ``brainspineai models`` lists the shadowed
folders. Every name a card gives (id, weights, files) must be a plain name, so a card can
never point outside its folder.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .download import MAX_CARD_BYTES, check_file_name, check_id, check_sha256, sha256_file  # noqa: F401 - re-exported
from .download import make_temp_dir as _make_temp_dir
from .download import umask as _umask
from .errors import ChecksumError, InputError, ModelError

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
DEFAULT_MODEL_ID = "brain-tumor-4class-efficientnetlite0"
DEFAULT_SEGMENTER_ID = "brats-flair-t1ce-clipunet3d"  # task "segmentation-3d", see brainspineai.segmentation.inference
REQUIRED_FIELDS = ("id", "task", "architecture", "class_names", "input_size", "sha256", "weights")
ZOO_DIR = Path(__file__).resolve().parent / "zoo"
PINS_FILE = ZOO_DIR / "pins.json"
_log = logging.getLogger("brainspineai")
_warned: set = set()


def user_home() -> Path:
    """Per-user folder for the catalogue and the download cache."""
    return Path(os.environ.get("BRAINSPINEAI_HOME", Path.home() / ".brainspineai"))


def search_roots() -> list[Path]:
    """Folders whose sub-folders are model folders, in lookup order (ids that are not shipped)."""
    roots = [Path(p) for p in os.environ.get("BRAINSPINEAI_MODEL_PATH", "").split(os.pathsep) if p]
    roots += [user_home() / "models", ZOO_DIR]
    return roots


def shipped_pins() -> dict:
    """The pins of the shipped models: id -> ``{"card": sha256, "weights": sha256}``."""
    try:
        pins = json.loads(PINS_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ModelError(f"{PINS_FILE}: the pins of the shipped models are missing or unreadable; "
                         "reinstall brainspineai") from None
    return {k: v for k, v in pins.items() if not k.startswith("_")}


def _check_pinned(card: dict, card_sha: str, source) -> None:
    pin = shipped_pins().get(card["id"])
    if pin is None:
        return
    if card_sha != pin["card"] or card["sha256"] != pin["weights"]:
        raise ChecksumError(f"{source}: the card has the id of the shipped model '{card['id']}' but differs from it "
                            "(pinned sha256 of the card and weights); a modified model needs an id of its own")


def parse_card(data: bytes, source) -> dict:
    """Parse and check a model card's bytes (``source``, a path or URL, names it in errors):
    the required fields with their types, every name plain (:func:`check_id`,
    :func:`brainspineai.download.check_file_name`), every digest a sha256, and a card with a
    shipped id identical to the pinned one.

    :raises ModelError: invalid card. :raises ChecksumError: a modified shipped card.
    """
    if len(data) > MAX_CARD_BYTES:
        raise ModelError(f"{source}: model card is larger than {MAX_CARD_BYTES} bytes")
    try:
        card = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{source}: model card is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(card, dict):
        raise ModelError(f"{source}: model card must be a JSON object")
    missing = [f for f in REQUIRED_FIELDS if f not in card]
    if missing:
        raise ModelError(f"{source}: model card lacks {', '.join(missing)}")
    try:
        check_id(card["id"])
        check_file_name(card["weights"], "weights file")
        check_sha256(card["sha256"], "sha256 of the weights")
        for name, digest in _dict_field(card, "files").items():
            check_file_name(name)
            check_sha256(digest, f"sha256 of {name}")
        for name, size in _dict_field(card, "sizes").items():
            check_file_name(name)
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ModelError(f"size of {name} {size!r} is not a byte count")
    except ModelError as exc:
        raise ModelError(f"{source}: {exc}") from None
    bad = [f for f in ("task", "architecture") if not isinstance(card[f], str)]
    names = card["class_names"]
    # a classifier lists its classes; an encoder (task encoder-2d) has none
    if not _is_list_of(names, str) or len(set(names)) != len(names) or (not names and card["task"] != "encoder-2d"):
        bad.append("class_names (a list of distinct names)")
    size = card["input_size"]
    if not _is_list_of(size, int) or not 1 <= len(size) <= 3 or min(size) < 1:
        bad.append("input_size (1-3 positive integers)")
    ch = card.get("in_channels", 1)
    if not isinstance(ch, int) or isinstance(ch, bool) or ch < 1:
        bad.append("in_channels (a positive integer)")
    if bad:
        raise ModelError(f"{source}: model card field {', '.join(bad)} has the wrong type or value")
    if card["weights"] in _dict_field(card, "files") and card["files"][card["weights"]] != card["sha256"]:
        raise ModelError(f"{source}: model card gives two different sha256 for {card['weights']}")
    _check_pinned(card, hashlib.sha256(data).hexdigest(), source)
    return card


def _is_list_of(value, kind) -> bool:
    return isinstance(value, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in value)


def _dict_field(card: dict, key: str) -> dict:
    value = card.get(key) or {}
    if not isinstance(value, dict):
        raise ModelError(f"model card field {key} must be an object")
    return value


def card_files(card: dict) -> dict:
    """Every file a model needs: plain name -> sha256 (the weights and ``card["files"]``)."""
    return {card["weights"]: card["sha256"], **_dict_field(card, "files")}


def read_card(folder) -> dict:
    """Read and check a model card (:func:`parse_card`).

    :raises ModelError: the card is missing, not JSON, too large, or has a missing or invalid
        field. :raises ChecksumError: the card has a shipped id but is not the shipped card.
    """
    folder = Path(folder)
    card_path = folder / CARD_NAME
    if not card_path.is_file():
        raise ModelError(f"{folder}: not a model folder (no {CARD_NAME})")
    try:
        with open(card_path, "rb") as fh:
            data = fh.read(MAX_CARD_BYTES + 1)
    except OSError as exc:
        raise ModelError(f"{card_path}: cannot read the model card ({exc.strerror})") from None
    return parse_card(data, card_path)


def _catalogue_entries():
    """(folder, card or None, shadowed reason or None) of every model folder in the search roots."""
    pins = shipped_pins()
    for root in search_roots():
        if not root.is_dir():
            continue
        for sub in sorted(root.iterdir()):
            if not (sub / CARD_NAME).is_file():
                continue
            try:
                card = read_card(sub)
            except ChecksumError:  # a modified copy of a shipped model
                yield sub, {"id": _raw_id(sub)}, "differs from the shipped model of the same id"
                continue
            except ModelError:
                continue
            if card["id"] in pins and sub.resolve().parent != ZOO_DIR:
                yield sub, card, "has the id of a shipped model"
            else:
                yield sub, card, None


def _raw_id(folder: Path):
    try:
        return json.loads((folder / CARD_NAME).read_text(encoding="utf-8")).get("id")
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
        return None


def shadowed_models() -> list[dict]:
    """Folders in ``BRAINSPINEAI_MODEL_PATH`` or the user catalogue that are never used by
    id because their card has the id of a shipped model: ``{"path", "reason"}``."""
    return [{"path": str(sub), "reason": reason} for sub, _, reason in _catalogue_entries() if reason]


def list_models() -> list[dict]:
    """Cards of every model found in :func:`search_roots` (first occurrence of an id wins;
    shipped ids always from ``zoo/``), each with an added ``"path"`` key."""
    seen, out = set(), []
    for sub, card, reason in _catalogue_entries():
        if reason or card["id"] in seen:
            continue
        seen.add(card["id"])
        out.append({**card, "path": str(sub)})
    return out


def _warn_shadowed(ref: str) -> None:
    for sub, card, reason in _catalogue_entries():
        if reason and card["id"] == ref and str(sub) not in _warned:
            _warned.add(str(sub))
            _log.warning(f"brainspineai: warning: {sub} is shadowed: it {reason} '{ref}'; the shipped model is "
                         "used (give the folder's model another id to use it)")


def _looks_like_path(ref: str) -> bool:
    return any(sep in ref for sep in ("/", "\\", os.sep)) or ref.startswith((".", "~"))


def resolve_model(ref: str | os.PathLike | None = None) -> Path:
    """Find the folder of a model given by id, folder path or URL (``None``: the default).
    A shipped id always gives the shipped folder (a same-id folder elsewhere is shadowed, with
    a warning); a plain name that is not a shipped id is looked up as a folder path, then in
    the catalogue.

    :raises ModelError: unknown id, or a path that is not a model folder.
    """
    ref = DEFAULT_MODEL_ID if ref is None or str(ref) == "" else str(ref)
    if ref.startswith(("http://", "https://", "file://")):
        return fetch_remote(ref)
    if not _looks_like_path(ref) and ref in shipped_pins() and (ZOO_DIR / ref / CARD_NAME).is_file():
        _warn_shadowed(ref)
        return ZOO_DIR / ref
    p = Path(ref).expanduser()
    if p.exists():
        if p.is_file() and p.name in (CARD_NAME, WEIGHTS_NAME):
            p = p.parent
        if not (p / CARD_NAME).is_file():
            raise ModelError(f"{ref}: not a model folder (no {CARD_NAME})")
        return p
    entries = [(sub, card) for sub, card, reason in _catalogue_entries() if not reason]
    for sub, _ in entries:
        if sub.name == ref:
            return sub
    for sub, card in entries:
        if card["id"] == ref:
            return sub
    known = ", ".join(c["id"] for c in list_models()) or "none"
    raise ModelError(f"unknown model '{ref}' (not an id in the catalogue, a model folder or a URL); known models: {known}")


def verify_weights(folder, card: dict) -> Path:
    """Check that the weights and every file in ``card["files"]`` exist inside ``folder`` and
    match their sha256 in the card (a shipped model's card is pinned, see :func:`read_card`).

    :returns: the weights file. :raises ModelError: missing file or a name that is not plain.
    :raises ChecksumError: digest mismatch.
    """
    folder = Path(folder)
    for name, digest in card_files(card).items():
        try:
            path = folder / check_file_name(name)
            check_sha256(digest, f"sha256 of {name}")
        except ModelError as exc:
            raise ModelError(f"{folder}: {exc}") from None
        if not path.is_file():
            raise ModelError(f"{folder}: {'weights file' if name == card['weights'] else 'file'} {name} is missing")
        got = sha256_file(path)
        if got != digest:
            raise ChecksumError(
                f"{path}: checksum mismatch (sha256 {got[:12]}..., model card says {digest[:12]}...); "
                "the file is corrupted or was replaced")
    return folder / card["weights"]


def fetch_remote(url: str) -> Path:
    """Download a model folder (``model.json``, its weights and every file in ``files``) from
    ``url`` into ``$BRAINSPINEAI_HOME/cache/<id>-<card sha256[:12]>`` with the checks of
    :func:`brainspineai.download.fetch_model` (card checked by :func:`parse_card`), and
    return the folder. A complete earlier download of the same card is reused.

    :raises ModelError: the URL, download or card is invalid. :raises ChecksumError: a
        downloaded file does not match the card.
    """
    from .download import fetch_model

    def parse(data: bytes, source: str):
        card = parse_card(data, source)
        return card["id"], card_files(card), card.get("sizes")

    return fetch_model(url, user_home() / "cache", parse)


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


def _is_model_folder(path: Path) -> bool:
    """A folder this project wrote: a ``model.json`` object with the required card fields,
    and plain files only (no sub-folders, no links)."""
    try:
        card = json.loads((path / CARD_NAME).read_text(encoding="utf-8"))
        entries = list(path.iterdir())
    except (OSError, ValueError):
        return False
    return isinstance(card, dict) and all(f in card for f in REQUIRED_FIELDS) and \
        all(e.is_file() and not e.is_symlink() for e in entries)


def _check_out_target(out: Path, overwrite: bool, option: str) -> None:
    if out.is_symlink():
        raise InputError(f"{option} {out}: is a symbolic link; give the real folder")
    if out.exists():
        if not out.is_dir():
            raise InputError(f"{option} {out}: is a file, not a model folder; refusing to replace it")
        if any(out.iterdir()):
            if not _is_model_folder(out):
                raise InputError(f"{option} {out}: is a folder that is not a model folder of brainspineai; "
                                 "refusing to replace it (choose a new folder)")
            if not overwrite:
                raise InputError(f"{option} {out}: a model folder exists there; pass --overwrite to replace it")
        return
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{option} {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {out}: cannot write in {parent}")


def check_out_dir(path, overwrite: bool = False, model_id=None, option: str = "--out") -> Path:
    """Check that a model folder may be written at ``path`` before any work starts.

    Allowed: a path that does not exist (below a writable folder, or one that can be
    created), an empty folder, and with ``overwrite`` a model folder of this project (a
    ``model.json`` with the required card fields and plain files only). Refused: a file, a
    link, any other folder (a dataset, a home folder: never deleted), an existing model
    folder without ``overwrite``, and a model id (``model_id``; ``None``: the folder's name;
    ``""``: decided later, not checked) that is not valid (:func:`check_id`) or is shipped.

    :returns: ``Path(path)``. :raises InputError: with the reason, naming ``option``.
    """
    out = Path(path)
    _check_out_target(out, overwrite, option)
    if model_id == "":
        return out
    mid = model_id or out.name
    try:
        check_id(mid)
    except ModelError:
        what = "--model-id" if model_id else f"{option} folder name (the default model id)"
        raise InputError(f"{what} {mid!r}: use only letters, digits, '.', '-', '_'") from None
    if mid in shipped_pins():
        raise InputError(f"model id '{mid}' is the id of a shipped model; choose another "
                         f"({'--model-id' if model_id else 'folder name or --model-id'})")
    return out


def write_model_folder(out_dir, card: dict, write_files, extra_files: dict | None = None,
                       overwrite: bool = True) -> Path:
    """Write a model folder atomically: ``write_files(tmp)`` writes the model's files into a
    temporary sibling folder and returns the card fields they determine (e.g. ``weights``,
    ``sha256``); the card (``created`` filled in) and ``extra_files`` (file name -> text, e.g.
    ``split.json``) are written beside them, then the folder replaces ``out_dir``. An existing
    model there stays intact until the new one is complete; on any error nothing is left.
    Only an empty folder or a model folder of this project is ever replaced (checked before
    and again just before the replacement); a file or any other folder is refused.

    :param overwrite: replace an existing model folder (False: refuse it too).
    :returns: the model folder. :raises InputError: ``out_dir`` may not be replaced.
    """
    out_dir = Path(out_dir)
    _check_out_target(out_dir, overwrite, "model folder")
    for name in extra_files or {}:
        check_file_name(name)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_temp_dir(f".{out_dir.name}.", out_dir.parent)
    try:
        card = {**card, **write_files(tmp)}
        card.setdefault("created", _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat())
        (tmp / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~_umask())  # safetensors writes its file private
        _check_out_target(out_dir, overwrite, "model folder")
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
