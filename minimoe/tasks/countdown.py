"""Countdown-style puzzles: reach a target from given numbers with + − × (each number at most once).

The answer is an arithmetic expression, so many answers are right; it is checked by evaluating it with a small
AST walker (never `eval`) that accepts only integer literals, the allowed operators and parentheses, and exact
rational arithmetic. This is the task TinyZero used to reproduce the R1-Zero "aha" behaviour in miniature.
"""

from __future__ import annotations

import ast
import random
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction

from minimoe.tasks.splits import draw_unique

OPERATORS = "+-*/"
MAX_EXPRESSION_CHARS = 128  # longer answers are wrong without being parsed: bounds parser time and recursion
_ALLOWED_CHARS = frozenset("0123456789+-*/() \t\n")  # no letters, so no names, calls or 0x / 1e3 / 1_0 literals
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


class _Invalid(Exception):
    """An expression that is not a legal countdown answer."""


def _apply(op: str, x: Fraction, y: Fraction) -> Fraction:
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    if op == "*":
        return x * y
    if y == 0:
        raise _Invalid("division by zero")
    return x / y


def _walk(node: ast.AST, operators: str, used: list[int]) -> Fraction:
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
        op = _AST_OPS[type(node.op)]
        if op not in operators:
            raise _Invalid(f"operator {op} not allowed")
        return _apply(op, _walk(node.left, operators, used), _walk(node.right, operators, used))
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    raise _Invalid(f"{type(node).__name__} not allowed")


def evaluate_expression(expression: str, numbers: tuple[int, ...] | None = None,
                        operators: str = OPERATORS) -> Fraction | None:
    """Exact value of `expression`, or None when it is not a legal answer; never raises.

    Legal: decimal integer literals, binary operators from `operators`, parentheses, whitespace; at most
    `MAX_EXPRESSION_CHARS` characters. With `numbers`, each literal must be one of them and each number is used at
    most as often as it is given. Division is exact (fractions) and division by zero makes the expression illegal.
    """
    if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION_CHARS:
        return None
    if not set(expression) <= _ALLOWED_CHARS:
        return None
    try:
        tree = ast.parse(expression.strip(), mode="eval")
        used: list[int] = []
        value = _walk(tree.body, operators, used)
    except (_Invalid, SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None
    if numbers is not None and Counter(used) - Counter(numbers):
        return None
    return value


@dataclass(frozen=True)
class CountdownProblem:
    """Reach `target` from `numbers`; `solution` is one expression that does (the generator's)."""

    numbers: tuple[int, ...]
    target: int
    solution: str
    operators: str = "+-*"

    @property
    def question(self) -> str:
        return f"use {' '.join(map(str, self.numbers))} to make {self.target}"

    @property
    def answer(self) -> str:
        return self.solution

    @property
    def key(self) -> str:
        """Canonical name for splitting: the order of the numbers does not make a new puzzle."""
        return f"{sorted(self.numbers)}->{self.target}"

    def is_correct(self, answer: str) -> bool:
        """True when `answer` is a legal expression over `numbers` (each at most once) equal to `target`."""
        value = evaluate_expression(answer, self.numbers, self.operators)
        return value is not None and value == self.target


@dataclass(frozen=True)
class CountdownTask:
    """Generator of `CountdownProblem`s with `n_numbers` numbers in [1, max_number].

    A puzzle is built backwards: pick the numbers, combine a random subset of at least two of them (all of them
    with `use_all`) in a random binary tree of random operators, and keep it when the value lies in
    [min_target, max_target]. That tree, printed with parentheses, is the reference solution, so every puzzle is
    solvable. Division, when allowed, is only generated where it is exact.
    """

    n_numbers: int = 3
    max_number: int = 10
    min_target: int = 1
    max_target: int = 100
    operators: str = "+-*"
    use_all: bool = False
    heldout_fraction: float = 0.1
    max_tries: int = 1000

    def __post_init__(self):
        if self.n_numbers < 2:
            raise ValueError(f"n_numbers must be >= 2; got {self.n_numbers}")
        if self.max_number < 1:
            raise ValueError(f"max_number must be >= 1; got {self.max_number}")
        if self.min_target > self.max_target:
            raise ValueError(f"min_target ({self.min_target}) must be <= max_target ({self.max_target})")
        if not self.operators or any(op not in OPERATORS for op in self.operators):
            raise ValueError(f"operators must be a non-empty subset of {OPERATORS!r}; got {self.operators!r}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must lie in (0, 1); got {self.heldout_fraction}")

    def _combine(self, rng: random.Random, pool: list[tuple[str, int, bool]]) -> tuple[str, int]:
        """Merge random pairs of (text, value, is_compound) until one expression remains."""
        while len(pool) > 1:
            (left, x, left_compound), (right, y, right_compound) = pool.pop(), pool.pop()
            op = rng.choice(self.operators)
            if op == "/" and (y == 0 or x % y):
                op = "*"
            value = int(_apply(op, Fraction(x), Fraction(y)))
            text = f"{f'({left})' if left_compound else left}{op}{f'({right})' if right_compound else right}"
            pool.insert(rng.randint(0, len(pool)), (text, value, True))
        return pool[0][0], pool[0][1]

    def draw(self, rng: random.Random) -> CountdownProblem:
        for _ in range(self.max_tries):
            numbers = tuple(rng.randint(1, self.max_number) for _ in range(self.n_numbers))
            k = self.n_numbers if self.use_all else rng.randint(2, self.n_numbers)
            chosen = rng.sample(numbers, k)
            solution, target = self._combine(rng, [(str(v), v, False) for v in chosen])
            if self.min_target <= target <= self.max_target:
                return CountdownProblem(numbers, target, solution, self.operators)
        raise ValueError(f"no puzzle with a target in [{self.min_target}, {self.max_target}] after {self.max_tries} "
                         f"tries; widen the target range or change max_number")

    def sample(self, n: int, split: str = "train", seed: int = 0) -> list[CountdownProblem]:
        """`n` distinct puzzles of `split` ("train" | "heldout"); the same arguments give the same list.

        Shapes:
            returns a list of length n
        """
        return draw_unique(self.draw, lambda p: p.key, n, split, self.heldout_fraction, seed)
