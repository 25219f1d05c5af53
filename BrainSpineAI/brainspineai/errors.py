"""Errors raised by the BrainSpineAI library.

Every error a user can cause (a wrong file, a bad array, an unknown model) is a
:class:`BrainSpineAIError`; the CLI prints its message as one line and exits 2.
"""


class BrainSpineAIError(Exception):
    """Base class for errors caused by the input, the model or the environment."""


class InputError(BrainSpineAIError):
    """The image, volume or dataset given is missing, unreadable or unsuitable."""


class ModelError(BrainSpineAIError):
    """The model asked for is unknown, incomplete, corrupted or incompatible."""


class ChecksumError(ModelError):
    """A model's weights do not match the sha256 recorded in its model card."""
