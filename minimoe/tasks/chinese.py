"""Chapter 7's additions written in Traditional Chinese: 「三百四十五加一百二十是多少？」 and, in Cantonese,
「三百四十五加一百二十係幾多？」. The local task of chapter 11 (adapting a model to a new language).

Numbers are written as Hong Kong writes them in full (the "standard" register of 繁體中文): digits 零一二三四五六七八九,
units 十百千, "一" before 十 inside a larger number (一百一十 = 110, but 十五 = 15), and 零 for a run of skipped units
(三百零五 = 305, 一千零五十 = 1050). The Cantonese colloquial 兩 for 2 (兩百) is not generated; the checker accepts it.
The answer is checked by value, given in digits ("465") or in Chinese numerals ("四百六十五"), so the accuracy reward
of chapter 7 (DeepSeek-R1 §2.2.2: rule-based accuracy) carries over unchanged.

The split into train and held-out uses the same key as ``ArithmeticProblem`` ("a+b" with the smaller operand first),
so a held-out local problem is a held-out original problem too: no method of chapter 11 has seen it in either script.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from minimoe.tasks.arithmetic import ArithmeticProblem
from minimoe.tasks.splits import draw_unique

DIGITS = "零一二三四五六七八九"
UNITS = {"十": 10, "百": 100, "千": 1000}
QUESTION_FORMS = {"written": "{a}加{b}是多少？", "cantonese": "{a}加{b}係幾多？"}
"""書面語 (standard written Chinese) and 粵語 (Cantonese as Hong Kong writes it) forms of "a plus b is how much?"."""
MAX_NUMBER = 9999
CHINESE_CHARS = DIGITS + "".join(UNITS) + "兩加是多少係幾？"
"""Every character the task writes or its checker reads, beyond the digits: what a tokenizer must add."""


def to_chinese_numeral(n: int) -> str:
    """0 ≤ n ≤ 9999 in Chinese numerals: 345 → 三百四十五, 305 → 三百零五, 110 → 一百一十, 15 → 十五, 0 → 零."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"n must be an integer in [0, {MAX_NUMBER}]; got {n!r}")
    if n == 0:
        return DIGITS[0]
    if 10 <= n < 20:  # 十, 十一 … 十九: no leading 一 on its own
        return "十" + (DIGITS[n - 10] if n > 10 else "")
    text, pending_zero = "", False
    for unit, value in (("千", 1000), ("百", 100), ("十", 10), ("", 1)):
        digit = n // value % 10
        if digit == 0:
            pending_zero = bool(text)  # a zero between written units is read as one 零
            continue
        if pending_zero:
            text += DIGITS[0]
            pending_zero = False
        text += DIGITS[digit] + unit
    return text


def parse_chinese_numeral(text: str) -> int | None:
    """The value of a canonical Chinese numeral (兩 accepted for 二), or None when `text` is not one; never raises.

    Read left to right (a digit waits for its unit; 十 alone counts as 一十), then accepted only if writing the value
    back gives the same text: 三百五 or 三百零零五 are not numerals here.
    """
    if not text or len(text) > 16 or any(c not in DIGITS + "兩" + "".join(UNITS) for c in text):
        return None
    text = text.replace("兩", DIGITS[2])
    total, digit = 0, None
    for c in text:
        if c in UNITS:
            total += (1 if digit is None else digit) * UNITS[c]
            digit = None
        else:
            digit = DIGITS.index(c)
    total += digit or 0
    return total if total <= MAX_NUMBER and to_chinese_numeral(total) == text else None


@dataclass(frozen=True)
class ChineseAdditionProblem:
    """`a + b` asked in Chinese: `form` is "written" (是多少) or "cantonese" (係幾多)."""

    a: int
    b: int
    form: str = "written"

    def __post_init__(self):
        if self.form not in QUESTION_FORMS:
            raise ValueError(f"form must be one of {sorted(QUESTION_FORMS)}; got {self.form!r}")
        for name in ("a", "b"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_NUMBER // 2:
                raise ValueError(f"{name} must lie in [0, {MAX_NUMBER // 2}]; got {value}")

    @property
    def original(self) -> ArithmeticProblem:
        """The same problem as chapter 7 writes it ("345+120=")."""
        return ArithmeticProblem(self.a, self.b, "+")

    @property
    def target(self) -> int:
        return self.a + self.b

    @property
    def question(self) -> str:
        return QUESTION_FORMS[self.form].format(a=to_chinese_numeral(self.a), b=to_chinese_numeral(self.b))

    @property
    def answer(self) -> str:
        return str(self.target)

    @property
    def key(self) -> str:
        return self.original.key

    def is_correct(self, answer: str) -> bool:
        """True when `answer` is the sum in digits or in Chinese numerals (whitespace ignored); never raises."""
        text = answer.strip()
        return self.original.is_correct(text) or parse_chinese_numeral(text) == self.target


@dataclass(frozen=True)
class ChineseAdditionTask:
    """Additions of two `min_digits`..`max_digits`-digit numbers, asked in the forms of `forms` (drawn uniformly).

    Drawn like ``ArithmeticTask`` (digits per operand uniform, then the operand), split by the same key.
    """

    min_digits: int = 3
    max_digits: int = 3
    forms: tuple[str, ...] = tuple(QUESTION_FORMS)
    heldout_fraction: float = 0.1
    zero_digits: bool = True
    """False: operands use the digits 1–9 only, so every three-digit number is written in five characters (三百四十五)
    and no 零 appears; a tiny model then only has to learn the script, not where a missing unit leaves a gap."""

    def __post_init__(self):
        if not 1 <= self.min_digits <= self.max_digits <= 3:
            raise ValueError(f"need 1 <= min_digits <= max_digits <= 3; got min_digits={self.min_digits}, "
                             f"max_digits={self.max_digits}")
        if not self.forms or any(f not in QUESTION_FORMS for f in self.forms):
            raise ValueError(f"forms must be a non-empty subset of {tuple(QUESTION_FORMS)}; got {self.forms!r}")
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must lie in (0, 1); got {self.heldout_fraction}")

    def _operand(self, rng: random.Random) -> int:
        n_digits = rng.randint(self.min_digits, self.max_digits)
        if not self.zero_digits:
            return int("".join(str(rng.randint(1, 9)) for _ in range(n_digits)))
        return rng.randint(0 if n_digits == 1 else 10 ** (n_digits - 1), 10**n_digits - 1)

    def draw(self, rng: random.Random) -> ChineseAdditionProblem:
        return ChineseAdditionProblem(self._operand(rng), self._operand(rng), rng.choice(self.forms))

    def sample(self, n: int, split: str = "train", seed: int = 0) -> list[ChineseAdditionProblem]:
        """`n` distinct problems of `split` ("train" | "heldout"); the same arguments give the same list.

        Shapes:
            returns a list of length n
        """
        return draw_unique(self.draw, lambda p: p.key, n, split, self.heldout_fraction, seed)
