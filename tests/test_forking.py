"""minimoe.forking.fork_map: the same results, in the same order, in forked workers as in this process."""

import os

import pytest
import torch

from minimoe.forking import fork_map


def test_fork_map_equals_the_loop_in_order_with_a_closure():
    weights = torch.randn(4, 4)  # inherited by the workers, never pickled

    def job(seed: int) -> tuple[int, torch.Tensor]:
        torch.manual_seed(seed)
        return seed, torch.randn(3, 4) @ weights

    here = fork_map(job, range(5), workers=1)
    forked = fork_map(job, range(5), workers=2)
    assert [s for s, _ in forked] == list(range(5))
    for (_, a), (_, b) in zip(here, forked):
        assert torch.equal(a, b)


def test_workers_run_in_other_processes_with_one_thread():
    seen = fork_map(lambda _: (os.getpid(), torch.get_num_threads()), range(4), workers=2)
    assert all(pid != os.getpid() for pid, _ in seen)
    assert {threads for _, threads in seen} == {1}


def test_one_worker_or_one_job_runs_here():
    assert fork_map(lambda _: os.getpid(), range(3), workers=1) == [os.getpid()] * 3
    assert fork_map(lambda _: os.getpid(), [0], workers=2) == [os.getpid()]
    assert fork_map(lambda _: 1, [], workers=2) == []


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_bad_workers_are_named(workers):
    with pytest.raises(ValueError, match=f"workers \\({workers!r}\\)".replace(".", "\\.")):
        fork_map(lambda job: job, [1, 2], workers=workers)


def test_a_worker_error_reaches_the_caller():
    def job(x: int) -> int:
        if x == 2:
            raise KeyError(f"job {x} failed")
        return x

    with pytest.raises(KeyError, match="job 2 failed"):
        fork_map(job, range(4), workers=2)


def test_nested_pools_are_refused():
    with pytest.raises(RuntimeError, match="nested"):
        fork_map(lambda _: fork_map(lambda y: y, [1, 2], workers=2), [1, 2], workers=2)
