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


def check_count(name: str, value: object, least: int = 1) -> int:
    """``value`` if it is an integer ≥ ``least`` (not a bool), else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{name} must be an integer ≥ {least}, got {value!r}; "
                          f"give a whole number such as {max(least, 1)}")
    return value


def check_real(name: str, value: object, low: float = 0.0, high: float = float("inf"),
               *, low_open: bool = True, high_open: bool = True, example: str = "") -> float:
    """``value`` as a float if it is a finite real number (not a bool) between ``low`` and
    ``high`` (excluded where ``*_open``), else :class:`ConfigError` naming the range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and value == value and abs(value) != float("inf")
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        if high == float("inf"):
            where = f"{'>' if low_open else '≥'} {low:g}"
        else:
            where = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be a finite number {where}, got {value!r}; "
                          f"e.g. {example or name + '=' + _example(low, high)}")
    return float(value)  # type: ignore[arg-type]


def _example(low: float, high: float) -> str:
    if high != float("inf"):
        return f"{(low + high) / 2:g}"
    return f"{max(low, 0) + 1:g}" if low >= 0 else "0"


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
