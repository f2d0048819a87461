"""minimoe.rl.demo: the R1-Zero demo's data, and the shipped SFT checkpoint is what its command writes."""

import random
import re

import pytest
import torch

from _rl import TOK
from minimoe.rl.demo import addition_task, addition_trace, sft_examples


def test_addition_trace_is_schoolbook_addition_and_slips_only_on_carries():
    assert addition_trace(347, 285) == ("7+5+0=12,4+8+1=13,3+2+1=06", "632")
    assert addition_trace(999, 1) == ("9+1+0=10,9+0+1=10,9+0+1=10", "1000")
    assert addition_trace(347, 285, slip_prob=1.0) == ("7+5+0=12,4+8+0=12,3+2+0=05", "522")
    with pytest.raises(ValueError, match="slip_prob"):
        addition_trace(1, 2, slip_prob=1.5)
    rng = random.Random(0)
    for p in addition_task().sample(300, seed=1):
        assert addition_trace(p.a, p.b)[1] == p.answer
        assert addition_trace(p.a, p.b, 1.0, rng)[1] == p.answer or p.n_carries > 0


def test_sft_examples_supervise_only_the_completion():
    inputs, targets = sft_examples(TOK, 4, slip_prob=0.0, seed=5)
    for row in range(4):
        supervised = targets[row][targets[row] != -100].tolist()
        assert supervised[-1] == TOK.eos_id
        completion = TOK.decode(supervised)
        assert completion.startswith("<think>") and completion.endswith("</answer>")
        prompt = TOK.decode(inputs[row].tolist()).split("<think>")[0]
        assert inputs[row, 0] == TOK.bos_id and re.fullmatch(r"\d{3}\+\d{3}=", prompt)
        a, b = map(int, prompt[:-1].split("+"))
        assert completion.endswith(f"<answer>{a + b}</answer>")  # slip_prob 0: the teacher is right
        # next-token targets: the input shifted by one, on the completion only
        start = len(prompt) + 1
        assert targets[row, start - 1:start - 1 + len(supervised) - 1].tolist() == inputs[row, start:start + len(
            supervised) - 1].tolist()


def test_the_demo_never_writes_into_the_package(tmp_path, monkeypatch):
    from minimoe.rl import demo

    monkeypatch.setenv("MINIMOE_HOME", str(tmp_path))
    assert demo.user_checkpoint() == tmp_path / "sft_addition.pt"
    assert demo.shipped_checkpoint().parent.name == "checkpoints"
    shipped = demo.shipped_checkpoint().read_bytes()
    with pytest.raises(SystemExit):
        demo.main(["sft", "--checkpoint", str(demo.shipped_checkpoint()), "--sft-steps", "1"])
    with pytest.raises(SystemExit):
        demo.main(["all", "--ship"])
    demo.main(["sft", "--sft-steps", "1", "--seed", "0"])
    assert (tmp_path / "sft_addition.pt").exists() and demo.shipped_checkpoint().read_bytes() == shipped
    assert demo.grpo_settings() is not demo.grpo_settings()  # a fresh dict: no module global to mutate
    assert demo.addition_task() is not demo.addition_task()


@pytest.mark.slow  # about a minute of CPU: the whole SFT run
def test_the_shipped_checkpoint_is_what_the_documented_command_writes(tmp_path, monkeypatch):
    """``python -m minimoe.rl.demo sft`` writes the shipped policy: same config, same weights (see
    minimoe/rl/checkpoints/README.md); after a change to the model, its initialisation or the SFT recipe, regenerate
    it with ``python -m minimoe.rl.demo sft --ship``."""
    from minimoe.checkpoint import load_checkpoint
    from minimoe.rl import demo

    monkeypatch.setenv("MINIMOE_HOME", str(tmp_path))
    torch.set_num_threads(1)
    demo.main(["sft"])
    made, shipped = load_checkpoint(demo.user_checkpoint()).model, demo.load_sft_policy()
    assert made.cfg == shipped.cfg
    made_state, shipped_state = made.state_dict(), shipped.state_dict()
    assert made_state.keys() == shipped_state.keys()
    assert all(torch.equal(made_state[k], shipped_state[k]) for k in made_state), \
        "the shipped SFT policy is not what `python -m minimoe.rl.demo sft` trains: regenerate it with --ship"
