"""The one place user-facing errors come from.

A ``FusionfeatError`` is bad input, not a bug: the CLI prints its message on one line and exits 2.
"""

from __future__ import annotations


class FusionfeatError(Exception):
    """Bad input: the message names the file or option and says what to do."""

    exit_code = 2


class DatasetError(FusionfeatError):
    """The data folder, manifest or an image in it cannot be used."""


class WeightsError(FusionfeatError):
    """Backbone weights are missing, unreadable or do not match the backbone."""


class StoreError(FusionfeatError):
    """A feature store is missing, locked, incomplete or does not match the request."""


class ImageDecodeError(DatasetError):
    """One image cannot be decoded; carries the path so ``--on-error skip`` can record it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path
        self.reason = reason


class FusionfeatWarning(UserWarning):
    """Something the user should know but that does not stop the work; the CLI prints it as ``warning: …``."""


class RandomWeightsWarning(FusionfeatWarning):
    """Backbones run with random weights: their features are not ImageNet features."""


class PrecisionWarning(FusionfeatWarning):
    """The requested precision runs emulated (slowly) on this machine."""


class DamagedBatchWarning(FusionfeatWarning):
    """A committed batch of an unfinished extraction is damaged; it is recomputed, never assembled."""


class WeightsWarning(FusionfeatWarning):
    """A weights file is not the one its backbone's authors published (its SHA-256 differs)."""


class CompileWarning(FusionfeatWarning):
    """``--compile auto`` chose compiled trunks that could not be built or did not match eager: eager is used."""


class NonFiniteFeaturesWarning(FusionfeatWarning):
    """Some images gave NaN or infinite features at extraction: recorded per row and left out."""
