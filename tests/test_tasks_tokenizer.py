"""minimoe.tasks.tokenizer: CharTokenizer round-trips every task's prompts and completions; rejects junk."""

import pytest

from _tasks import TASKS
from minimoe.tasks import CharTokenizer, format_completion, format_prompt


def test_tokenizer_round_trips_prompts_and_completions():
    tok = CharTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2) and tok.vocab_size == len(tok.chars) + 3
    for task in TASKS:
        for p in task.sample(20, seed=3):
            text = format_prompt(p.question, "r1") + " " + format_completion("carry 1\nok", p.answer)
            ids = tok.encode(text, add_bos=True, add_eos=True)
            assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and len(ids) == len(text) + 2
            assert tok.decode(ids) == text
    assert tok.decode([tok.bos_id, *tok.encode("12"), tok.eos_id, *tok.encode("3"), tok.pad_id]) == "12"
    assert tok.decode(tok.encode("1") + [tok.eos_id] + tok.encode("3"), stop_at_eos=False) == "13"


def test_tokenizer_rejects_unknown_characters_and_ids():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="'é'"):
        tok.encode("café")
    with pytest.raises(ValueError, match="ids"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="repeat"):
        CharTokenizer("abca")
