"""Errors that reach the user as one line: what was wrong and how to fix it.

Every error raised on purpose by pyro-vae derives from :class:`PyroVAEError`. The command line
prints ``pyro-vae: error: <message>`` and exits with status 2 for any of them, so a message must
name the problem *and* the fix in one sentence.
"""

from __future__ import annotations


class PyroVAEError(Exception):
    """Base class of the library's user-facing errors.

    Its text is always its first line: Pyro's ``poutine.trace`` re-raises an error from inside
    a model or guide as a new exception of the same class with the trace's table of site shapes
    appended, which must not reach the user as part of the message (the original message is
    kept, and the full exception chain stays available as ``__cause__``).
    """

    def __str__(self) -> str:
        return super().__str__().split("\n", 1)[0]


class ConfigError(PyroVAEError, ValueError):
    """An option has an unknown or out-of-range value."""


def check_count(name: str, value: object) -> int:
    """``value`` if it is an integer ≥ 1 (not a bool), else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer ≥ 1, got {value!r}; "
                          "give a whole number such as 1")
    return value


class ModelError(PyroVAEError, ValueError):
    """A model or guide that a tool cannot use as it is written (no plate over the data, a global
    latent where a per-point quantity is asked, a guide site the model lacks, ...): the message
    names the site or plate and what the tool needs."""


class DataError(PyroVAEError, ValueError):
    """The data cannot be used: NaN/inf, wrong shape, empty, or outside a likelihood's support."""


class CheckpointError(PyroVAEError):
    """A checkpoint is missing, corrupt, from another version, or from another configuration."""


class TrainingDivergedError(PyroVAEError):
    """The loss or a gradient became NaN or infinite during training."""
