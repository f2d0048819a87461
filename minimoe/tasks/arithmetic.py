"""Multi-digit addition and subtraction: a verifiable task whose difficulty is the number of digits and carries.

The answer is checked by value, so a reward needs no model of correctness beyond integer parsing
(DeepSeek-R1 §2.2.2: rule-based accuracy rewards for problems with deterministic results).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from minimoe.tasks.splits import draw_unique

OPERATIONS = ("+", "-")
MAX_ANSWER_CHARS = 64  # longer answers are wrong without being parsed, so garbage costs nothing
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class ArithmeticProblem:
    """`a op b` for op in "+", "-"; the question reads "a+b=" and the answer is the decimal result."""

    a: int
    b: int
    op: str

    @property
    def target(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def question(self) -> str:
        return f"{self.a}{self.op}{self.b}="

    @property
    def answer(self) -> str:
        return str(self.target)

    @property
    def key(self) -> str:
        """Canonical name for splitting: a+b and b+a are the same problem."""
        a, b = (min(self.a, self.b), max(self.a, self.b)) if self.op == "+" else (self.a, self.b)
        return f"{a}{self.op}{b}"

    @property
    def n_carries(self) -> int:
        """Carries (addition) or borrows (subtraction, for a >= b >= 0) of the schoolbook column method."""
        a, b = (self.a, self.b) if self.op == "+" or self.a >= self.b else (self.b, self.a)
        carry, count = 0, 0
        while a or b:
            column = (a % 10 + b % 10 + carry) if self.op == "+" else (a % 10 - b % 10 - carry)
            carry = int(column >= 10) if self.op == "+" else int(column < 0)
            count += carry
            a, b = a // 10, b // 10
        return count

    def is_correct(self, answer: str) -> bool:
        """True when `answer` (surrounding whitespace ignored) is the integer result; never raises."""
        text = answer.strip()
        if len(text) > MAX_ANSWER_CHARS or not _INTEGER.fullmatch(text):
            return False
        return int(text) == self.target


@dataclass(frozen=True)
class ArithmeticTask:
    """Generator of `ArithmeticProblem`s with operands of `min_digits`..`max_digits` digits.

    The number of digits of each operand is drawn uniformly, then the operand uniformly among numbers with that many
    digits, so short and long operands are equally common. Without `allow_negative`, subtraction puts the larger
    operand first. Problems are split into train and held-out by `minimoe.tasks.splits.split_of`.
    """

    min_digits: int = 1
    max_digits: int = 3
    operations: tuple[str, ...] = OPERATIONS
    allow_negative: bool = False
    heldout_fraction: float = 0.1

    def __post_init__(self):
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits; got min_digits={self.min_digits}, "
                             f"max_digits={self.max_digits}")
        if not self.operations or any(op not in OPERATIONS for op in self.operations):
            raise ValueError(f"operations must be a non-empty subset of {OPERATIONS}; got {self.operations!r}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must lie in (0, 1); got {self.heldout_fraction}")

    def _operand(self, rng: random.Random) -> int:
        n_digits = rng.randint(self.min_digits, self.max_digits)
        low = 0 if n_digits == 1 else 10 ** (n_digits - 1)
        return rng.randint(low, 10**n_digits - 1)

    def draw(self, rng: random.Random) -> ArithmeticProblem:
        a, b, op = self._operand(rng), self._operand(rng), rng.choice(self.operations)
        if op == "-" and not self.allow_negative and a < b:
            a, b = b, a
        return ArithmeticProblem(a, b, op)

    def sample(self, n: int, split: str = "train", seed: int = 0) -> list[ArithmeticProblem]:
        """`n` distinct problems of `split` ("train" | "heldout"); the same arguments give the same list.

        Shapes:
            returns a list of length n
        """
        return draw_unique(self.draw, lambda p: p.key, n, split, self.heldout_fraction, seed)
