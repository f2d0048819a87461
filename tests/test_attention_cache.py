"""minimoe.attention.cache: prefill then decode equals no cache, and what each attention kind caches."""

import pytest
import torch

from _attention import KINDS, build, mla_cfg, run
from minimoe.attention import LayerCache


@pytest.mark.parametrize("kind", KINDS)
def test_cache_prefill_then_decode_equals_no_cache(kind):
    module = build(kind, interleave=kind != "gqa")
    x = torch.randn(2, 9, 32)
    cache = LayerCache()
    steps = [run(module, x[:, :4], cache=cache)] + [run(module, x[:, t:t + 1], cache=cache) for t in range(4, 9)]
    assert len(cache) == 9
    torch.testing.assert_close(torch.cat(steps, dim=1), run(module, x), atol=1e-5, rtol=1e-5)


def test_cache_holds_exactly_the_expected_elements_per_token():
    cfg = mla_cfg(q_lora_rank=12)
    H, n, r, v = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    x = torch.randn(2, 5, 32)
    expected = {"mla-absorbed": cfg.kv_lora_rank + r, "mla-naive": H * (n + r) + H * v,
                "mha": 2 * H * cfg.qk_head_dim, "gqa": 2 * 2 * cfg.qk_head_dim, "mqa": 2 * cfg.qk_head_dim}
    for kind, elements in expected.items():
        cache = LayerCache()
        run(build(kind, q_lora_rank=12), x, cache=cache)
        assert cache.elements_per_token() == elements, kind
    cache = LayerCache()
    run(build("mla-absorbed"), x, cache=cache)
    assert sorted(cache.tensors) == ["c_kv", "k_rope"] and cache.tensors["c_kv"].shape == (2, 5, cfg.kv_lora_rank)
