"""minimoe.tasks.sequences: seeded next-token batches of the pretraining tasks, each with its structure."""

import math

import pytest
import torch

from minimoe.tasks import CopyTask, MarkovGrammar, ModularProgression
from minimoe.tasks.sequences import IGNORE_INDEX

TASKS = [MarkovGrammar(), CopyTask(), CopyTask(reverse=True), ModularProgression()]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: type(t).__name__)
@pytest.mark.parametrize("seq_len", [7, 16])
def test_batches_are_deterministic_next_token_pairs(task, seq_len):
    a = task(0, 5, seq_len, torch.Generator().manual_seed(3))
    b = task(0, 5, seq_len, torch.Generator().manual_seed(3))
    c = task(0, 5, seq_len, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    inputs, targets = a
    assert inputs.shape == targets.shape == (5, seq_len) and inputs.dtype == targets.dtype == torch.long
    assert 0 <= inputs.min() and inputs.max() < task.vocab_size
    scored = targets != IGNORE_INDEX
    assert scored.any() and targets[scored].max() < task.vocab_size
    # targets are the inputs shifted by one wherever both are known
    assert torch.equal(targets[:, :-1][scored[:, :-1]], inputs[:, 1:][scored[:, :-1]])


def test_copy_and_reverse():
    inputs, targets = CopyTask(n_symbols=5)(0, 3, 8, torch.Generator().manual_seed(0))
    x = inputs[:, :4]
    assert (inputs[:, 4] == CopyTask.sep).all()
    assert torch.equal(targets[:, 4:], x) and (targets[:, :4] == IGNORE_INDEX).all()
    inputs, targets = CopyTask(reverse=True)(0, 3, 9, torch.Generator().manual_seed(0))
    assert (inputs[:, 0] == CopyTask.bos).all()
    assert torch.equal(targets[:, 5:], inputs[:, 1:5].flip(-1))


def test_modular_progression_follows_the_recurrence():
    task = ModularProgression(modulus=7)
    inputs, targets = task(0, 6, 12, torch.Generator().manual_seed(0))
    assert (targets[:, 0] == IGNORE_INDEX).all()
    assert torch.equal(targets[:, 1:], (2 * inputs[:, 1:] - inputs[:, :-1]) % 7)


def test_markov_grammar_structure_and_entropy():
    task = MarkovGrammar(n_clusters=4, cluster_size=8, branching=2, switch_prob=0.1)
    p = task.transition
    torch.testing.assert_close(p.sum(-1), torch.ones(32, dtype=torch.float64))
    same = task.cluster_of(torch.arange(32))[:, None] == task.cluster_of(torch.arange(32))[None, :]
    torch.testing.assert_close(p[same].sum() / 32, torch.tensor(0.9, dtype=torch.float64))
    assert ((p * same).gt(0).sum(-1) == 2).all()  # `branching` successors inside the own cluster
    q = 0.1
    expected = -(0.9 * math.log(0.9 / 2) + q * math.log(q / 24))
    assert task.entropy_rate() == pytest.approx(expected)
    inputs, targets = task(0, 64, 32, torch.Generator().manual_seed(0))
    assert (p[inputs.flatten(), targets.flatten()] > 0).all()  # every sampled transition is allowed
    switched = (task.cluster_of(inputs) != task.cluster_of(targets)).float().mean().item()
    assert 0.05 < switched < 0.15
    other = MarkovGrammar(n_clusters=4, cluster_size=8, branching=2, switch_prob=0.1, seed=1)
    assert not torch.equal(other.transition, p)


@pytest.mark.parametrize("make, message", [
    (lambda: MarkovGrammar(branching=0), "branching"),
    (lambda: MarkovGrammar(n_clusters=1, switch_prob=0.1), "single cluster"),
    (lambda: MarkovGrammar(switch_prob=1.5), "switch_prob"),
    (lambda: CopyTask(n_symbols=0), "n_symbols"),
    (lambda: ModularProgression(modulus=1), "modulus"),
    (lambda: CopyTask()(0, 2, 1, torch.Generator()), r"seq_len \(1\) must be an integer >= 2"),
    (lambda: MarkovGrammar()(0, 0, 8, torch.Generator()), "batch_size"),
])
def test_bad_settings_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()
