"""Range checks of numeric options, as argparse ``type=`` functions, and the one-line error
of the ``brainspineai`` command.

:func:`install_validators` walks a built parser (every sub-command) and gives each numeric
option in :data:`RANGES` its checking ``type``, so ``--image-size 0``, ``--epochs -1``,
``--val-fraction 1.5`` or ``--lr nan`` are refused by the parser, before anything is read
or computed. :class:`OneLineParser` prints a parser error as the single line
``brainspineai: error: ...`` (no usage block) and exits 2.
"""
from __future__ import annotations

import argparse
import math
import re
import sys

MAX_IMAGE_SIDE = 2048
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
_OWN = re.compile(r"^\S+: (must be|is not) ")  # the messages of the type functions below
_LONG_LIST = re.compile(r"[\[\(\{][^\[\]\(\)\{\}]{200,}[\]\)\}]")


def clean_message(text: str, limit: int = 200, total: int = 1000) -> str:
    """One printable line: ANSI escape codes removed, control characters escaped
    (``\\n``), bracketed value lists longer than ``limit`` characters cut, the whole line
    cut at ``total`` characters."""
    text = _ANSI.sub("", str(text))
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    text = _LONG_LIST.sub(lambda m: m.group(0)[:limit] + f" ... ({len(m.group(0))} characters)" + m.group(0)[-1], text)
    if len(text) > total:
        text = text[:total] + f" ... ({len(text)} characters)"
    return text


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``brainspineai: error: PROG: MESSAGE``."""

    def error(self, message):
        m = re.match(r"argument ([^:]+): (.*)$", message, re.S)
        if m:  # "argument --x: 0: must be ..." -> "--x 0: must be ..."; "--x: invalid choice ..."
            opt, rest = m.groups()
            opt = opt.split("/")[-1]
            message = f"{opt} {rest}" if _OWN.match(rest) else f"{opt}: {rest}"
        sys.stderr.write("brainspineai: error: " + clean_message(f"{message} (see '{self.prog} --help')") + "\n")
        sys.exit(2)


def _number(kind, text):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text}: is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text}: is not a finite number")
    return value


def ranged(kind, lo=None, hi=None, lo_open=False, hi_open=False, what=""):
    """A ``type=`` function: ``kind`` (int or float) within ``lo`` .. ``hi`` (``None``: no
    bound; ``*_open``: the bound itself is excluded)."""
    def check(text):
        v = _number(kind, text)
        bad = (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi)))
        if bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
            raise argparse.ArgumentTypeError(f"{text}: must be {what or 'a value'} in {span}")
        return v
    check.__name__ = f"{kind.__name__} in range"
    return check


positive_int = ranged(int, 1, None, what="a positive integer")
nonneg_int = ranged(int, 0, None, what="0 or a positive integer")
positive_float = ranged(float, 0, None, lo_open=True, what="a positive number")
nonneg_float = ranged(float, 0, None, what="0 or a positive number")
open_fraction = ranged(float, 0, 1, lo_open=True, hi_open=True, what="a fraction")
probability = ranged(float, 0, 1, what="a probability")
fraction_upto_1 = ranged(float, 0, 1, lo_open=True, what="a fraction")
overlap_fraction = ranged(float, 0, 1, hi_open=True, what="a fraction")

# option dest -> type function (for options whose default is 0 where 0 means "automatic", see
# install_validators). Options the pipelines check themselves with a sharper rule (--crop-fraction,
# --temperature, --queue-size, --label-fraction) are left to them.
RANGES = {
    "image_size": ranged(int, 8, MAX_IMAGE_SIDE, what="a side in pixels"),
    "epochs": ranged(int, 1, 100000, what="a number of epochs"),
    "batch_size": ranged(int, 1, 65536, what="a batch size"),
    "lr": positive_float,
    "val_fraction": open_fraction,
    "seed": ranged(int, 0, 2 ** 32 - 1, what="a seed"),
    "limit_per_class": nonneg_int,
    "bootstrap": ranged(int, 0, 1000000, what="0 or a number of resamples"),
    "overlap": overlap_fraction,
    "patch_size": ranged(int, 8, 512, what="a patch side in voxels"),
    "spacing": ranged(float, 0, 100, lo_open=True, what="a voxel size in mm"),
    "samples_per_epoch": nonneg_int,
    "channels": ranged(int, 1, 4096, what="a channel count"),
    "val_cases": nonneg_int,
    "proj_dim": ranged(int, 1, 65536, what="a projection size"),
    "supcon_weight": nonneg_float,
    "aux_weight": nonneg_float,
    "skull_strip_p": probability,
    "fractions": fraction_upto_1,
    "words": ranged(int, 2, 100000, what="a codebook size"),
    "population": positive_int,
    "iterations": positive_int,
    "penalty": nonneg_float,
}
ZERO_MEANS_AUTO = {"image_size"}


def install_validators(parser: argparse.ArgumentParser) -> None:
    """Give every numeric option of ``parser`` and its sub-parsers the range check of
    :data:`RANGES` (by option ``dest``). An option whose default is 0 in :data:`ZERO_MEANS_AUTO`
    (e.g. ``--image-size`` of ``train finetune``: 0 = the encoder's) also accepts 0."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                install_validators(sub)
            continue
        check = RANGES.get(action.dest)
        if check is None or action.type not in (int, float):
            continue
        if action.dest in ZERO_MEANS_AUTO and action.default == 0:
            inner = check

            def check(text, inner=inner):
                return 0 if _number(int, text) == 0 else inner(text)
        action.type = check


def guarded_load(ref, load, *args, **kwargs):
    """``load(*args, **kwargs)`` (a model loader) with every foreseeable failure of a broken
    model folder (unreadable file, card fields of odd types, corrupt weights or pickles)
    turned into a :class:`brainspineai.errors.ModelError` naming the model as the user gave it.

    :raises ModelError: as described; errors of the library's own classes pass unchanged."""
    from ..errors import BrainSpineAIError, ModelError

    name = ref if ref else "the default model"
    try:
        model = load(*args, **kwargs)
        _probe(model)
        return model
    except BrainSpineAIError:
        raise
    except OSError as exc:
        what = exc.filename if exc.filename is not None else ""
        raise ModelError(f"model {name}: cannot read {what} ({exc.strerror or exc})".replace("read  (", "read it (")) from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model folder is data: whatever breaks its loading is its fault
        # (KeyError / TypeError / ValueError from card fields, SafetensorError, pickle and zip errors, ...)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(f"model {name}: the model card or its files are malformed or incompatible "
                         f"({type(exc).__name__}: {first})") from None


def _probe(model) -> None:
    """Read the card-derived properties a command uses, so that a field of an odd type fails
    here (as a model error) and not in the middle of the work."""
    for attr in ("id", "class_names", "input_size", "sequences"):
        try:
            value = getattr(model, attr)
        except AttributeError:
            continue
        if attr == "class_names" and (not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value)):
            raise ValueError(f"class_names must be a list of names, not {type(value).__name__}")
        if attr == "input_size" and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"input_size must give a positive side in pixels, not {value!r}")
        if attr == "sequences" and (not isinstance(value, list) or not all(isinstance(c, str) for c in value)):
            raise ValueError("sequences must be a list of sequence names")
