"""minimoe.tasks.splits: seeded generators draw distinct problems; train and held-out splits are disjoint."""

import pytest

from _tasks import TASK_IDS, TASKS
from minimoe.tasks import ArithmeticTask, split_of


@pytest.mark.parametrize("task", TASKS, ids=TASK_IDS)
def test_generators_are_deterministic_and_splits_disjoint(task):
    train, heldout = task.sample(300, "train", seed=0), task.sample(60, "heldout", seed=0)
    assert train == task.sample(300, "train", seed=0)
    assert train != task.sample(300, "train", seed=1)
    assert len({p.key for p in train}) == 300 and len({p.key for p in heldout}) == 60
    more_train = task.sample(300, "train", seed=1)
    assert not ({p.key for p in train + more_train} & {p.key for p in heldout})
    assert all(split_of(p.key, task.heldout_fraction) == "heldout" for p in heldout)
    assert all(p.is_correct(p.answer) for p in train + heldout)


def test_too_small_a_problem_space_raises():
    with pytest.raises(ValueError, match="distinct"):
        ArithmeticTask(min_digits=1, max_digits=1, operations=("+",)).sample(200)
