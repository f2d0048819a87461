"""The judge of a1_mla: RoPE, naive MLA, absorbed decoding, cache sizes, merged weights (12 points over 21 items).

The references are the judge's own ``minimoe.attention`` (trusted); the sandbox's copy of those modules raises
"not available while grading" in everything the lab asks students to write (:data:`STUBS`).
"""

from __future__ import annotations

import torch

from judge.core import Failed, Item, call, check_tensor, tensors, unchanged
from judge.remote import Config, module_spec
from minimoe.attention import attention_inputs
from minimoe.attention.cache import LayerCache
from minimoe.attention.mla import MultiHeadLatentAttention
from minimoe.attention.rope import RotaryEmbedding

STUBS = {"minimoe.attention.rope": ["apply_rope", "RotaryEmbedding.forward", "RotaryEmbedding.cos_sin"],
         "minimoe.attention.mla": ["mla_absorbed_scores", "MultiHeadLatentAttention.forward",
                                   "MultiHeadLatentAttention._naive", "MultiHeadLatentAttention._absorbed"]}
WKV_B_REFUSED = ("mla.wkv_b(...) expands the latent cache to per-head keys and values: absorbed decoding reads "
                 "mla.wkv_b.weight instead")


def _int(gen: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (1,), generator=gen))


# -- Part 1: rope_rotate ------------------------------------------------------------------------------------------
def _rope(shape, base, dtype):
    def check(remote, gen):
        x = torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)
        pos = torch.randint(0, 200, shape[:2], generator=gen)
        reply = call(remote, "rope_rotate", x, pos, base, full=True)
        unchanged("rope_rotate", reply, (x, pos))
        want = RotaryEmbedding(shape[-1], 256, base, interleave=True)(x, pos)
        check_tensor("rope_rotate", reply["value"], want, 1e-4)  # the reference turns float32 angles
    return check


# -- Part 2: mla_naive --------------------------------------------------------------------------------------------
def _naive(config: Config, T: int):
    def check(remote, gen):
        cfg = config.build()
        torch.manual_seed(_int(gen, 0, 2**31))
        mla = MultiHeadLatentAttention(cfg).double()
        x = torch.randn(2, T, cfg.hidden_size, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            want = mla(x, *attention_inputs(RotaryEmbedding.of(cfg), 2, T))
        reply = call(remote, "mla_naive", module_spec(mla, "MultiHeadLatentAttention", config), config, x, full=True)
        unchanged("mla_naive", reply, (x,))
        check_tensor("mla_naive", reply["value"], want, 1e-6)
    return check


# -- Part 3: mla_absorbed_decode ----------------------------------------------------------------------------------
def _absorbed(config: Config, batch: int, prefix: int, steps: int):
    """`steps` decoding steps after a `prefix` the reference cached; each step starts from the reference's cache."""
    def check(remote, gen):
        cfg = config.build()
        torch.manual_seed(_int(gen, 0, 2**31))
        mla = MultiHeadLatentAttention(cfg, mode="absorbed").double()
        spec = module_spec(mla, "MultiHeadLatentAttention", config, kwargs={"mode": "absorbed"},
                           disabled=["wkv_b"], disabled_message=WKV_B_REFUSED)
        x = torch.randn(batch, prefix + steps, cfg.hidden_size, generator=gen, dtype=torch.float64)
        cache, rope = LayerCache(), RotaryEmbedding.of(cfg)
        with torch.no_grad():
            if prefix:
                mla(x[:, :prefix], *attention_inputs(rope, batch, prefix), cache)
        c_kv = cache.tensors["c_kv"] if prefix else torch.zeros(batch, 0, cfg.kv_lora_rank, dtype=torch.float64)
        k_rope = cache.tensors["k_rope"] if prefix else torch.zeros(batch, 0, cfg.qk_rope_head_dim,
                                                                    dtype=torch.float64)
        for t in range(prefix, prefix + steps):
            x_t = x[:, t:t + 1]
            reply = call(remote, "mla_absorbed_decode", spec, config, x_t, c_kv, k_rope, full=True)
            unchanged("mla_absorbed_decode", reply, (x_t, c_kv, k_rope))
            value = reply["value"]
            if not isinstance(value, tuple) or len(value) != 3:
                raise Failed("mla_absorbed_decode: wrong type (a tuple (out, c_kv, k_rope) is expected)")
            with torch.no_grad():
                want = mla(x_t, *attention_inputs(rope, batch, 1, len(cache)), cache)
            c_kv, k_rope = cache.tensors["c_kv"], cache.tensors["k_rope"]
            check_tensor("mla_absorbed_decode", value[1], c_kv, 1e-6, "wrong c_kv cache returned")
            check_tensor("mla_absorbed_decode", value[2], k_rope, 1e-6, "wrong k_rope cache returned")
            check_tensor("mla_absorbed_decode", value[0], want, 1e-6)
    return check


# -- Part 4: cache_elements_per_token -----------------------------------------------------------------------------
def _reference_count(cfg, mode: str) -> int:
    cache = LayerCache()
    with torch.no_grad():
        MultiHeadLatentAttention(cfg, mode=mode)(torch.randn(1, 2, cfg.hidden_size),
                                                 *attention_inputs(RotaryEmbedding.of(cfg), 1, 2), cache)
    return cache.elements_per_token()


def _count(got, want: int) -> None:
    if type(got) is not int:
        raise Failed("cache_elements_per_token: wrong type (a Python int is expected)")
    if got != want:
        raise Failed("cache_elements_per_token: wrong value")


def _cache_random(mode: str):
    def check(remote, gen):
        for _ in range(3):
            h, dc, n, r, v = (_int(gen, lo, hi) for lo, hi in [(1, 6), (4, 40), (2, 20), (1, 6), (2, 20)])
            config = Config("tiny-dense", {"num_attention_heads": h, "kv_lora_rank": dc, "qk_nope_head_dim": n,
                                           "qk_rope_head_dim": 2 * r, "v_head_dim": v})
            _count(call(remote, "cache_elements_per_token", config, mode), _reference_count(config.build(), mode))
    return check


def _cache_preset(preset: str):
    def check(remote, gen):
        config = Config(preset)
        cfg = config.build()
        for mode in ("naive", "absorbed"):
            want = (cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
                    if mode == "naive" else cfg.kv_lora_rank + cfg.qk_rope_head_dim)
            if preset.startswith("tiny"):  # small enough to run: the count a real cache holds
                want = _reference_count(cfg, mode)
            _count(call(remote, "cache_elements_per_token", config, mode), want)
    return check


# -- Part 5: merge_weights ---------------------------------------------------------------------------------------
def _merged(mla: MultiHeadLatentAttention, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    """W^UKᵀ_i W^UQ_i (H, d_c, d_q) and W^O_i W^UV_i (D, H, d_c): DeepSeek-V2 App. C's merged inference weights."""
    H, n, r, v = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    w_up = mla.wq.weight if cfg.q_lora_rank is None else mla.wq_b.weight  # (H·(n+r), d_q)
    w_uk, w_uv = mla.wkv_b.weight.view(H, n + v, -1).split((n, v), dim=1)  # (H, n, d_c), (H, v, d_c)
    w_q = torch.einsum("hnc,hnq->hcq", w_uk, w_up.view(H, n + r, -1)[:, :n])
    w_o = torch.einsum("dhv,hvc->dhc", mla.wo.weight.view(-1, H, v), w_uv)
    return w_q.detach(), w_o.detach()


def _merge(config: Config, side: str):
    """One side of the merged weights: "query" (W^UK into W^UQ) or "output" (W^UV into W^O)."""
    def check(remote, gen):
        cfg = config.build()
        torch.manual_seed(_int(gen, 0, 2**31))
        mla = MultiHeadLatentAttention(cfg).double()
        value = call(remote, "merge_weights", module_spec(mla, "MultiHeadLatentAttention", config), config)
        w_q, w_o = tensors("merge_weights", value, 2)
        want_q, want_o = _merged(mla, cfg)
        if side == "query":
            check_tensor("merge_weights", w_q, want_q, 1e-6, "wrong w_q (W^UK merged into the query projection)")
        else:
            check_tensor("merge_weights", w_o, want_o, 1e-6, "wrong w_o (W^UV merged into W^O)")
    return check


OTHER_DIMS = Config("tiny-dense", {"num_attention_heads": 3, "kv_lora_rank": 24, "qk_rope_head_dim": 4,
                                   "v_head_dim": 8, "rope_theta": 777.0})
ITEMS = [
    Item("test_rope_rotate", "a key (B, T, d_r), float64", 0.5, _rope((3, 6, 16), 10000.0, torch.float64)),
    Item("test_rope_rotate", "a query (B, T, H, d_r), another base", 0.5, _rope((2, 4, 5, 8), 500.0, torch.float64)),
    Item("test_rope_rotate", "float32 input: float32 result", 0.5, _rope((1, 9, 2, 64), 10000.0, torch.float32)),
    Item("test_rope_rotate", "edge case: a single pair (d_r = 2)", 0.25, _rope((2, 3, 2), 10000.0, torch.float64)),
    Item("test_rope_rotate", "edge case: a single head", 0.25, _rope((1, 5, 1, 4), 10000.0, torch.float64)),
    Item("test_mla_naive", "tiny-dense (no query compression)", 1.0, _naive(Config("tiny-dense"), 9)),
    Item("test_mla_naive", "tiny-v3 (query compression)", 1.0, _naive(Config("tiny-v3"), 9)),
    Item("test_mla_naive", "other head sizes and RoPE base", 0.5, _naive(OTHER_DIMS, 9)),
    Item("test_mla_naive", "edge case: a single token", 0.5, _naive(Config("tiny-v3"), 1)),
    Item("test_mla_absorbed_decode", "tiny-dense, 4 steps after 3 cached tokens", 1.5,
         _absorbed(Config("tiny-dense"), 3, 3, 4)),
    Item("test_mla_absorbed_decode", "tiny-v3, 4 steps after 3 cached tokens", 1.5,
         _absorbed(Config("tiny-v3"), 3, 3, 4)),
    Item("test_mla_absorbed_decode", "edge case: the first step, from an empty cache", 0.5,
         _absorbed(Config("tiny-v3"), 2, 0, 1)),
    Item("test_mla_absorbed_decode", "edge case: a batch of one", 0.5, _absorbed(Config("tiny-dense"), 1, 2, 3)),
    Item("test_cache_elements_per_token", "naive, random head sizes", 0.25, _cache_random("naive")),
    Item("test_cache_elements_per_token", "absorbed, random head sizes", 0.25, _cache_random("absorbed")),
    Item("test_cache_elements_per_token", "edge case: query compression caches nothing more", 0.25,
         _cache_preset("tiny-v3")),
    Item("test_cache_elements_per_token", "DeepSeek-V3's published sizes", 0.25, _cache_preset("deepseek-v3")),
    Item("test_merge_weights", "w_q without query compression (tiny-dense)", 0.5, _merge(Config("tiny-dense"), "query")),
    Item("test_merge_weights", "w_q with query compression (tiny-v3)", 0.5, _merge(Config("tiny-v3"), "query")),
    Item("test_merge_weights", "w_o", 0.5, _merge(Config("tiny-v3"), "output")),
    Item("test_merge_weights", "edge case: v_head_dim differs from qk_nope_head_dim", 0.5, _merge(OTHER_DIMS, "output")),
]
