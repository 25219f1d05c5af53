"""Preprocessing of raw clinical studies before segmentation and classification: rigid (then
optionally affine) co-registration of every sequence onto the reference sequence with
SimpleITK (:mod:`.registration`) and brain extraction with the pretrained deepbet model
installed from PyPI (:mod:`.brain`), assembled in :func:`.pipeline.preprocess`.

A capability package: it imports the core (``errors``), the core never imports it.
"""
from __future__ import annotations

__all__ = ["preprocess", "Preprocessed", "register", "extract_brain"]


def __getattr__(name):  # lazy: importing the package pulls in neither SimpleITK nor torch
    if name in ("preprocess", "Preprocessed"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "register":
        from .registration import register

        return register
    if name == "extract_brain":
        from .brain import extract_brain

        return extract_brain
    raise AttributeError(name)
