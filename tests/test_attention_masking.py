"""minimoe.attention.masking: causality and left padding, for every attention kind (MHA/GQA/MQA and MLA)."""

import pytest
import torch

from _attention import KINDS, build, run
from minimoe.attention import LayerCache


@pytest.mark.parametrize("kind", KINDS)
def test_causal_future_tokens_never_change_past_outputs(kind):
    module = build(kind, q_lora_rank=12)
    x = torch.randn(2, 9, 32)
    x_changed = x.clone()
    x_changed[:, 5:] = torch.randn(2, 4, 32)
    torch.testing.assert_close(run(module, x)[:, :5], run(module, x_changed)[:, :5])


@pytest.mark.parametrize("kind", KINDS)
def test_left_padding_gives_the_unpadded_outputs_and_no_nan(kind):
    module = build(kind, q_lora_rank=12)
    long, short = torch.randn(1, 7, 32), torch.randn(1, 4, 32)
    batch = torch.cat((long, torch.cat((torch.randn(1, 3, 32), short), dim=1)))  # row 1: 3 pads, then 4 tokens
    padding_mask = torch.tensor([[True] * 7, [False] * 3 + [True] * 4])
    position_ids = torch.stack((torch.arange(7), torch.tensor([0, 0, 0, 0, 1, 2, 3])))
    cache = LayerCache()
    prefill = run(module, batch[:, :5], position_ids[:, :5], cache=cache, padding_mask=padding_mask[:, :5])
    decoded = run(module, batch[:, 5:], position_ids[:, 5:], cache=cache, padding_mask=padding_mask)
    out = torch.cat((prefill, decoded), dim=1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1:, 3:], run(module, short), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[:1], run(module, long), atol=1e-5, rtol=1e-5)
    no_cache = run(module, batch, position_ids, padding_mask=padding_mask)
    assert torch.isfinite(no_cache).all()  # padded queries see no real key: finite, otherwise arbitrary
    torch.testing.assert_close(no_cache[padding_mask], out[padding_mask], atol=1e-5, rtol=1e-5)
