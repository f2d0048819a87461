"""Field checks shared by the parts of ``ModelConfig``: each names the field, the value and the rule it breaks.

A wrong *type* raises ``ConfigTypeError``; a value of the right type outside its range raises ``ValueError``.
``bool`` is never an integer or a number here (``True`` for ``num_hidden_layers`` is a mistake, not a 1), integers
must be integers (``2.5`` experts per token is rejected, not truncated) and floats must be finite.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any


class ConfigTypeError(TypeError, ValueError):
    """A config field holds a value of the wrong type.

    A ``TypeError`` by nature and a ``ValueError`` by contract: ``ModelConfig`` documents that every invalid
    value raises ``ValueError``, so ``except ValueError`` still catches it.
    """


def require(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``."""
    if not ok:
        raise ValueError(message)


def _got(value: Any) -> str:
    return f"got {value!r} ({type(value).__name__})"


def integer(name: str, value: Any, *, minimum: int | None = None, optional: bool = False) -> int | None:
    """``value`` as an ``int`` (None when ``optional``); bools, floats and strings are rejected by name."""
    if value is None and optional:
        return None
    kind = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigTypeError(f"{name} must be {kind}{' or None' if optional else ''}, {_got(value)}")
    value = int(value)
    require(minimum is None or value >= minimum, f"{name} ({value}) must be {kind}")
    return value


def real(name: str, value: Any, *, minimum: float | None = None, positive: bool = False,
         optional: bool = False) -> float | None:
    """``value`` as a finite ``float`` (None when ``optional``), ``> 0`` if ``positive``, ``>= minimum`` if given."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigTypeError(f"{name} must be a number{' or None' if optional else ''}, {_got(value)}")
    value = float(value)
    require(math.isfinite(value), f"{name} ({value}) must be finite")
    require(not positive or value > 0, f"{name} ({value}) must be positive")
    require(minimum is None or value >= minimum,
            f"{name} ({value}) must be {'non-negative' if minimum == 0 else f'>= {minimum}'}")
    return value


def boolean(name: str, value: Any, *, optional: bool = False) -> bool | None:
    """``value`` if it is a ``bool`` (0 and 1 are not)."""
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise ConfigTypeError(f"{name} must be True or False{' or None' if optional else ''}, {_got(value)}")
    return value


def choice(name: str, value: Any, options: Sequence[str]) -> str:
    """``value`` if it is one of the strings ``options``."""
    if not isinstance(value, str):
        raise ConfigTypeError(f"{name} must be one of {tuple(options)}, {_got(value)}")
    require(value in options, f"{name} ({value!r}) must be one of {tuple(options)}")
    return value


def text(name: str, value: Any) -> str:
    """``value`` if it is a string."""
    if not isinstance(value, str):
        raise ConfigTypeError(f"{name} must be a string, {_got(value)}")
    return value
