"""One metrics record for every minimoe trainer: named columns of per-step values.

``History(step=[], loss=[])`` declares columns; ``history.record(step=3, loss=1.2)`` appends one value to each named
column (creating a column on first use); ``history.loss`` reads a column as a list. Pretraining records loss, learning
rate, gradient norm and per-layer expert load; GRPO records reward, accuracy, KL, clip fraction…; both save it in the
same checkpoint format (``minimoe.checkpoint``) and plot it the same way.
"""

from __future__ import annotations

import copy
from typing import Any


class History:
    """Per-step metrics, one list per metric name. ``len(history)`` is the number of recorded steps.

    Columns may have different lengths (e.g. ``eval_accuracy`` is recorded every few steps, next to ``eval_step``).
    Values are plain Python numbers or (nested) lists, so a history round-trips through ``to_dict`` / ``from_dict``
    and through a checkpoint.
    """

    def __init__(self, **columns: Any) -> None:
        object.__setattr__(self, "columns", {name: list(values) for name, values in columns.items()})

    def __getattr__(self, name: str) -> list:
        columns = self.__dict__.get("columns")
        if columns is not None and name in columns:
            return columns[name]
        raise AttributeError(f"History has no metric {name!r}; it records {sorted(columns or ())}")

    def __setattr__(self, name: str, value: Any) -> None:
        self.columns[name] = list(value)

    def record(self, **values: Any) -> None:
        """Append one value to each named column."""
        for name, value in values.items():
            self.columns.setdefault(name, []).append(value)

    def __len__(self) -> int:
        return len(self.columns.get("step", ()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, History) and self.columns == other.columns

    def __repr__(self) -> str:
        return f"History({len(self)} steps; {', '.join(self.columns)})"

    def to_dict(self) -> dict[str, list]:
        return copy.deepcopy(self.columns)

    @classmethod
    def from_dict(cls, d: dict[str, list]) -> History:
        if not isinstance(d, dict) or not all(isinstance(k, str) and isinstance(v, list) for k, v in d.items()):
            raise ValueError("a History dict maps metric names to lists")
        return cls(**d)
