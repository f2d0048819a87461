"""MLA decoding: cache size and time per token, naive vs absorbed vs transformers.

(a) Cache bytes per token for MHA, GQA, MLA-naive and MLA-absorbed on one config, measured from the
    ``LayerCache``s a real forward pass fills and checked against ``minimoe.kv_cache_per_token``. The absorbed
    cache must hold exactly (kv_lora_rank + qk_rope_head_dim) x layers elements per token (DeepSeek-V2 §2.1.3).
(b) Decode time per token against context length for minimoe's naive and absorbed MLA and transformers'
    ``DeepseekV3ForCausalLM`` on the same weights (``minimoe.interop.from_hf``). Each implementation prefills its
    own cache once (batch 1, in chunks) on the same tokens; for every context length the caches are cut to that
    length and repeated over the batch, then single-token steps are timed interleaved (median of several steps,
    ``torch.inference_mode``).

Run: ``python benchmarks/mla_decode.py`` (a few minutes on 2 CPU cores), ``--quick`` for tests.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
from transformers.cache_utils import DynamicCache

import minimoe
from minimoe.attention.cache import LayerCache
from minimoe.interop import from_hf


@dataclass
class Settings:
    """Benchmark size. ``quick`` keeps the same model and shrinks the contexts and the number of steps."""

    contexts: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    batch_size: int = 4  # B rows decoded together
    n_steps: int = 7  # timed decode steps per implementation and context (median reported)
    prefill_chunk: int = 512  # positions per prefill call
    n_layers: int = 2
    threads: int = 1


def hf_config(n_layers: int, max_positions: int) -> DeepseekV3Config:
    """A dense DeepSeek-V3-shaped model where attention matters: d_c = 4 d_h and d_r = d_h / 2 as in V2/V3."""
    return DeepseekV3Config(
        vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=n_layers,
        num_attention_heads=8, num_key_value_heads=8, q_lora_rank=None, kv_lora_rank=256,
        qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, max_position_embeddings=max_positions,
        first_k_dense_replace=n_layers, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
        rope_interleave=True, tie_word_embeddings=False)


# ----------------------------------------------------------------------------------------- (a) cache size
def measured_elements_per_token(model: minimoe.Transformer, n_tokens: int = 8) -> int:
    """Run one prefill and count what the caches of all layers hold per position of one sequence."""
    caches = model.new_cache()
    with torch.inference_mode():
        model(torch.zeros(1, n_tokens, dtype=torch.long), cache=caches)
    return sum(c.elements_per_token() for c in caches)


def cache_size_report(model: minimoe.Transformer) -> None:
    cfg = model.cfg
    layers, n_h = cfg.num_hidden_layers, cfg.num_attention_heads
    element_size = next(model.parameters()).element_size()
    rows = []
    # The baselines use d_h = qk_nope_head_dim, the per-head width DeepSeek-V2 Table 1 compares MLA with.
    for label, kv_heads, attention in (("MHA", n_h, "mha"), ("GQA", max(n_h // 4, 1), "gqa")):
        baseline_cfg = cfg.replace(attention_type="mha", num_key_value_heads=kv_heads,
                                   head_dim=cfg.qk_nope_head_dim)
        measured = measured_elements_per_token(minimoe.Transformer(baseline_cfg))
        expected = minimoe.kv_cache_per_token(baseline_cfg, attention=attention)
        rows.append((f"{label} ({kv_heads} kv heads of d_h {cfg.qk_nope_head_dim})", measured, expected))
    model.set_attn_mode("naive")
    rows.append(("MLA-naive (k, v per head)", measured_elements_per_token(model),
                 minimoe.kv_cache_per_token(cfg, attention="mla_naive")))
    model.set_attn_mode("absorbed")
    absorbed = measured_elements_per_token(model)
    rows.append(("MLA-absorbed (c_kv, k_rope)", absorbed, minimoe.kv_cache_per_token(cfg, attention="mla")))

    print(f"(a) KV cache per token, {layers} layers, {n_h} heads, d_c {cfg.kv_lora_rank}, "
          f"d_r {cfg.qk_rope_head_dim}, {element_size}-byte elements (measured from LayerCache)")
    print(f"    {'attention':<40}{'elements':>10}{'bytes':>10}{'expected':>10}{'vs absorbed':>13}")
    for label, measured, expected in rows:
        if measured != expected:
            raise SystemExit(f"{label}: measured {measured} elements per token, expected {expected}")
        print(f"    {label:<40}{measured:>10,}{measured * element_size:>10,}{expected:>10,}"
              f"{measured / absorbed:>12.2f}x")
    per_layer = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    if absorbed != per_layer * layers:
        raise SystemExit(f"absorbed cache holds {absorbed} elements per token, expected {per_layer * layers}")
    print(f"    cache check: MLA-absorbed holds (kv_lora_rank + qk_rope_head_dim) x layers = "
          f"({cfg.kv_lora_rank} + {cfg.qk_rope_head_dim}) x {layers} = {absorbed} elements per token: OK")
    print(f"    MLA-absorbed = GQA with (d_c + d_r) / (2 d_h) = {per_layer / (2 * cfg.qk_nope_head_dim):g} groups "
          "(DeepSeek-V2 §2.1.4)")


# ----------------------------------------------------------------------------------------- (b) decode time
def prefill_minimoe(model: minimoe.Transformer, mode: str, tokens: torch.Tensor, chunk: int) -> list[LayerCache]:
    """Fill a fresh minimoe cache in ``mode``, ``chunk`` positions per call.

    Shapes: tokens (1, S); returns one LayerCache per layer holding S positions.
    """
    model.set_attn_mode(mode)
    caches = model.new_cache()
    for start in range(0, tokens.shape[1], chunk):
        model(tokens[:, start:start + chunk], cache=caches)
    return caches


def prefill_hf(hf_model: DeepseekV3ForCausalLM, tokens: torch.Tensor, chunk: int) -> DynamicCache:
    """Fill a transformers cache the same way (it holds the normalised latent and the rotated shared key).

    Shapes: tokens (1, S); per layer keys (1, 1, S, d_c) and values (1, 1, S, d_r).
    """
    cache = DynamicCache(config=hf_model.config)
    for start in range(0, tokens.shape[1], chunk):
        hf_model(input_ids=tokens[:, start:start + chunk], past_key_values=cache, use_cache=True)
    return cache


def cut_minimoe(caches: list[LayerCache], length: int, batch_size: int) -> list[LayerCache]:
    """The first ``length`` positions of a batch-1 cache, repeated over ``batch_size`` rows.

    Shapes: each tensor (1, S, ...) -> (B, length, ...).
    """
    out = []
    for cache in caches:
        new = LayerCache()
        cut = {name: t[:, :length] for name, t in cache.tensors.items()}  # (1, S, ...)
        new.append(**{name: t.expand(batch_size, *t.shape[1:]).contiguous() for name, t in cut.items()})
        out.append(new)
    return out


def cut_hf(cache: DynamicCache, config: DeepseekV3Config, length: int, batch_size: int) -> DynamicCache:
    """``cut_minimoe`` for a transformers cache. Shapes: (1, 1, S, ·) -> (B, 1, length, ·)."""
    new = DynamicCache(config=config)
    for idx, layer in enumerate(cache.layers):
        keys, values = layer.keys[:, :, :length], layer.values[:, :, :length]  # (1, 1, S, d_c), (1, 1, S, d_r)
        new.update(keys.expand(batch_size, *keys.shape[1:]).contiguous(),
                   values.expand(batch_size, *values.shape[1:]).contiguous(), idx)
    return new


def decode_time_report(settings: Settings, model: minimoe.Transformer, hf_model: DeepseekV3ForCausalLM) -> None:
    generator = torch.Generator().manual_seed(0)
    vocab = model.cfg.vocab_size
    max_len = max(settings.contexts)
    prompt = torch.randint(vocab, (1, max_len), generator=generator)
    step_tokens = torch.randint(vocab, (settings.batch_size, settings.n_steps + 1), generator=generator)

    t0 = time.perf_counter()
    full = {"naive": prefill_minimoe(model, "naive", prompt, settings.prefill_chunk),
            "absorbed": prefill_minimoe(model, "absorbed", prompt, settings.prefill_chunk),
            "transformers": prefill_hf(hf_model, prompt, settings.prefill_chunk)}
    print(f"\n(b) decode time per token, batch {settings.batch_size}, {settings.threads} thread(s), transformers "
          f"attention {hf_model.config._attn_implementation!r}; prefill of {max_len} positions x 3 implementations "
          f"took {time.perf_counter() - t0:.1f} s")

    def step_fn(name: str, caches, token: torch.Tensor) -> torch.Tensor:
        if name == "transformers":
            return hf_model(input_ids=token, past_key_values=caches, use_cache=True).logits
        model.set_attn_mode(name)
        return model(token, cache=caches).logits

    names = list(full)
    header = f"    {'context':>8}" + "".join(f"{n + ' ms':>17}" for n in names)
    print(header + f"{'absorbed/naive':>16}{'absorbed/transformers':>23}")
    for length in settings.contexts:
        caches = {"naive": cut_minimoe(full["naive"], length, settings.batch_size),
                  "absorbed": cut_minimoe(full["absorbed"], length, settings.batch_size),
                  "transformers": cut_hf(full["transformers"], hf_model.config, length, settings.batch_size)}
        # The first step is a warm-up and a correctness check: all three see the same weights and context.
        logits = {n: step_fn(n, caches[n], step_tokens[:, :1]) for n in names}
        for n in names[1:]:
            torch.testing.assert_close(logits[n], logits["naive"], rtol=1e-4, atol=1e-4)
        times: dict[str, list[float]] = {n: [] for n in names}
        for step in range(settings.n_steps):
            token = step_tokens[:, step + 1:step + 2]
            for n in names[step % 3:] + names[:step % 3]:  # rotate the order so no one always runs first
                t0 = time.perf_counter()
                step_fn(n, caches[n], token)
                times[n].append(time.perf_counter() - t0)
        ms = {n: 1e3 * statistics.median(times[n]) for n in names}
        print(f"    {length:>8}" + "".join(f"{ms[n]:>17.2f}" for n in names)
              + f"{ms['absorbed'] / ms['naive']:>16.2f}{ms['absorbed'] / ms['transformers']:>23.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short contexts and few steps (for tests)")
    parser.add_argument("--batch-size", type=int, default=Settings.batch_size)
    parser.add_argument("--threads", type=int, default=Settings.threads)
    args = parser.parse_args()
    settings = Settings(batch_size=args.batch_size, threads=args.threads)
    if args.quick:
        settings = Settings(contexts=(32, 64), batch_size=args.batch_size, n_steps=3, prefill_chunk=32,
                            threads=args.threads)
    torch.set_num_threads(settings.threads)
    torch.manual_seed(0)

    hf_model = DeepseekV3ForCausalLM(hf_config(settings.n_layers, max(settings.contexts) + 64)).eval()
    model = from_hf(hf_model).eval()
    with torch.inference_mode():
        cache_size_report(model)
        decode_time_report(settings, model, hf_model)


if __name__ == "__main__":
    main()
