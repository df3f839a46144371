"""Typed errors. Anything a user can cause is a `HwnasUserError`: the CLI prints its message on one
line and exits with code 2. Everything else is a bug and keeps its traceback."""

from __future__ import annotations


class HwnasUserError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""


class ModelLoadError(HwnasUserError):
    """The model could not be found, downloaded or loaded."""


class UnsupportedModelError(HwnasUserError):
    """The model is not LLaMA-family (Llama, Mistral, Qwen2 style)."""


class SpaceError(HwnasUserError):
    """A search-space file is malformed or inconsistent with the model."""


class SubnetError(HwnasUserError):
    """A sub-network description is malformed or outside the model / space."""


class DataNotFoundError(HwnasUserError):
    """An evaluation or calibration file is missing from the data folder."""


class BackendError(HwnasUserError):
    """A runtime backend is unknown, unavailable, or failed to set up."""


class ProfileError(HwnasUserError):
    """A device profile folder is missing, malformed, or lacks the asked-for entry."""


def is_number(x: object) -> bool:
    """A finite int or float, not a bool (what loaders of user files accept as a number)."""
    import math

    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:  # an integer beyond float range
        return False


def is_int(x: object) -> bool:
    """An int, not a bool (JSON/YAML `true` is not a count)."""
    return isinstance(x, int) and not isinstance(x, bool)
