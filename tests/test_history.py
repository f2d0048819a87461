"""minimoe.history: a History round-trips through a dict, records new columns, and names a missing one."""

import pytest

from minimoe.history import History


def test_history_round_trips_through_a_dict():
    history = History(moe_layers=[1], step=[0], loss=[1.0], lm_loss=[1.0], balance_loss=[0.0], lr=[0.1],
                      grad_norm=[2.0], expert_load=[[[0.5, 0.5]]], max_vio=[[0.0]])
    assert History.from_dict(history.to_dict()) == history
    history.record(step=1, loss=0.5, new_metric=3)
    assert len(history) == 2 and history.loss == [1.0, 0.5] and history.new_metric == [3]
    with pytest.raises(AttributeError, match="no metric 'reward'"):
        history.reward
