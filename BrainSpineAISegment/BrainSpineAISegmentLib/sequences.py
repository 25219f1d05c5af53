"""Which MRI sequence a volume is, guessed from its name (no Slicer, no heavy imports).

Sequence keys are the ones of the ``brainspineai segment`` command line and of the BraTS 2020
file names: ``t1`` (native T1), ``t1ce`` (T1 after gadolinium contrast), ``t2`` and ``flair``
(T2-FLAIR). BraTS 2023 names (``t1n``, ``t1c``, ``t2w``, ``t2f``), common scanner and BIDS
names (``T1w``, ``T1_Gd``, ``T1+C``, ``post-contrast T1``, ``T2w``, ``T2-FLAIR``) and the
shared BraTS 2015 files (``Flair_subtrMeanDivStd``, ``T1c_subtrMeanDivStd``) are recognised.
"""
from __future__ import annotations

import re
from typing import Iterable

SEQUENCES = ("t1", "t1ce", "t2", "flair")
SEQUENCE_LABELS = {"t1": "T1", "t1ce": "T1 contrast (T1ce)", "t2": "T2", "flair": "FLAIR"}

_B, _E = r"(?<![a-z0-9])", r"(?![a-z0-9])"  # token boundaries (letters and digits only)
_RULES = (  # checked in this order: a T2-FLAIR is FLAIR, not T2; a contrast T1 is T1ce, not T1
    ("flair", re.compile(_B + r"(?:t2[\s_\-]*)?flair|" + _B + r"t2f" + _E)),
    ("t1ce", re.compile(_B + r"t1(?:w|wi)?[\s_\-]*(?:c|ce|gd|gad|post|contrast|\+\s*c|\+\s*gd)" + _E
                        + r"|contrast|" + _B + r"(?:gd|gad|ce)[\s_\-]*t1" + _E + r"|" + _B + r"post[\s_\-]*(?:gd[\s_\-]*)?t1")),
    ("t2", re.compile(_B + r"t2(?:w|wi)?" + _E)),
    ("t1", re.compile(_B + r"t1(?:n|w|wi|native|pre)?" + _E + r"|mprage")),
)


def guess_sequence(name: str | None) -> str | None:
    """The sequence key (one of :data:`SEQUENCES`) a volume name suggests, or None.

    >>> [guess_sequence(n) for n in ("BraTS-GLI-00001-000-t2f", "T1c_subtrMeanDivStd", "sub-01_T1w", "t2")]
    ['flair', 't1ce', 't1', 't2']
    """
    if not name:
        return None
    text = str(name).lower()
    for key, pattern in _RULES:
        if pattern.search(text):
            return key
    return None


def assign_sequences(names: Iterable[str]) -> dict[str, int]:
    """Index (into ``names``) of the first name guessed as each sequence.

    A name is used for one sequence at most; names that suggest no sequence are skipped.
    Returns ``{sequence: index}`` in :data:`SEQUENCES` order, only for sequences found.
    """
    found: dict[str, int] = {}
    for index, name in enumerate(names):
        key = guess_sequence(name)
        if key is not None and key not in found:
            found[key] = index
    return {key: found[key] for key in SEQUENCES if key in found}
