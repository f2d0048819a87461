"""A character tokenizer for the synthetic tasks: one token per character, plus pad / bos / eos.

A character vocabulary keeps the tiny models of chapters 5 and 7 honest: the model must learn to add digit by
digit, and the R1 tags `<think>` / `<answer>` are spelled out character by character, so producing the format is
itself something the policy learns (DeepSeek-R1 §2.2.2 rewards the `<think>` tags with its format reward).
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
# Digits and operators for the tasks, letters and punctuation for the templates and tags, space and newline.
DEFAULT_CHARS = "\n " + string.digits + "+-*/=()<>.,:;?!'" + string.ascii_lowercase + string.ascii_uppercase


class CharTokenizer:
    """Maps each character of `chars` to one id; ids 0, 1, 2 are pad, bos, eos.

    Shapes:
        encode: str -> list[int] of length len(text) (+1 per added bos / eos)
        decode: Iterable[int] -> str
    """

    def __init__(self, chars: str = DEFAULT_CHARS):
        if len(set(chars)) != len(chars):
            duplicates = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"chars must not repeat a character; repeated: {duplicates!r}")
        self.chars = chars
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        self._id_of = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(chars)}
        self._token_of = list(SPECIAL_TOKENS) + list(chars)

    @property
    def vocab_size(self) -> int:
        return len(self._token_of)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`; a character outside the vocabulary raises ValueError naming it."""
        unknown = sorted({c for c in text if c not in self._id_of})
        if unknown:
            raise ValueError(f"text contains characters outside the tokenizer's vocabulary: {unknown!r}")
        ids = [self._id_of[c] for c in text]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int], *, stop_at_eos: bool = True) -> str:
        """Text of `ids` without pad and bos; stops at the first eos unless `stop_at_eos=False`."""
        chars = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"ids must lie in [0, {self.vocab_size}); got {i}")
            if i == self.eos_id and stop_at_eos:
                break
            if i >= len(SPECIAL_TOKENS):
                chars.append(self._token_of[i])
        return "".join(chars)

    def decode_batch(self, batch: Iterable[Sequence[int]], *, stop_at_eos: bool = True) -> list[str]:
        return [self.decode(ids, stop_at_eos=stop_at_eos) for ids in batch]
