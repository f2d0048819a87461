"""Full-model speed: prefill and cached decode of minimoe against transformers' DeepseekV3ForCausalLM.

Same weights on both sides (``minimoe.interop.to_hf``), same tokens, ``torch.inference_mode``, float32, one thread.
The config is V3-shaped at CPU size: 4 layers (the first dense), MLA with q_lora_rank 128 and kv_lora_rank 64,
8 heads, 64 routed experts top-6 + 1 shared, sigmoid routing with noaux_tc over 8 groups keeping 4.

- prefill: one forward over B×T = 4×256 tokens (no cache);
- decode: a 1,024-token prompt is prefilled once (not timed), then 64 single-token steps with the cache are timed
  (greedy, the same tokens fed to both). minimoe decodes with ``attn_mode="absorbed"`` (latent cache), its
  prefill uses the same mode so the cache it fills is the one decode reads; transformers caches full keys/values.

Each measurement runs interleaved (minimoe, transformers, …) and the median ratio over repetitions is printed.
Times are process CPU time (``time.process_time``), so a machine shared with other jobs measures what an idle
single-core machine would.

Profile (torch.profiler, CPU, one thread, this config; ``--profile`` prints the tables for the current code).
Before commit c205391: prefill 4×256 spent 43% of self time in ``aten::mm`` (612 calls: the 3 MoE
layers' per-expert SwiGLUs, ~190 per layer, and the projections), 15% in attention's ``bmm`` (einsum over the
(B, H, T, S) scores), 8% in ``_softmax`` and 5% in ``masked_fill_`` (the (B, T, S) mask rebuilt in every layer and
applied to the full score tensor), 8% in ``mul``. Decode (1 token after 1,024) spent 27% in ``mm`` (~86 small
linears per step), 19% in the absorbed attention's five ``einsum``s per layer, 3.6% in ``masked_fill_`` and 2.8%
in ``sin``/``cos`` (mask and RoPE recomputed per layer), plus the per-layer ``.min()/.max()`` host syncs on the
positions. Changes: positions, RoPE table and mask once per forward (no mask at all for plain causal prefill and
for one-token decode without padding), attention through ``scaled_dot_product_attention`` with v zero-padded to the
qk width (the fused CPU flash kernel requires equal head dims; without it torch fell back to a math path with
``all``/``isneginf``/``where``, 4× slower on 4×8×256² scores), the absorbed path as one ``baddbmm`` over
heads-folded queries (later: the same fused ``scaled_dot_product_attention`` every attention uses, the
H·T latent queries as the rows of one key/value head [c^KV; k^R]). After: prefill is ~57% ``mm`` (the experts: the same FLOPs transformers runs) and ~18% the
flash-attention kernel; decode is dominated by per-op overhead of ~86 tiny linears per step (``mm``, ~30%).
Later, measured on a shared, loaded 2-core machine (process CPU time, median of 5 interleaved repetitions):
prefill 0.65×, decode after 1,024 tokens 0.45× transformers. Re-measured idle, five runs on one day: prefill
0.57-0.74× (the 0.74 from a run of 5 repetitions; transformers' own prefill time moved between 183 and 228 ms from
run to run, ours between 128 and 132 ms), decode 0.47-0.49×. Hence 15 repetitions by default.

Run: ``OMP_NUM_THREADS=1 nice python benchmarks/model_speed.py`` (about a minute on one core), ``--quick`` for tests.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import minimoe
from minimoe.interop import to_hf

TARGETS = {"prefill": 0.7, "decode": 0.5}  # minimoe time at most this × transformers'


def bench_config(quick: bool) -> minimoe.ModelConfig:
    if quick:
        return minimoe.ModelConfig.from_preset("tiny-v3", max_position_embeddings=512)
    return minimoe.ModelConfig.from_preset(
        "tiny-v3", vocab_size=1024, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
        first_k_dense_replace=1, num_attention_heads=8, q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32,
        qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=64, num_experts_per_tok=6, n_shared_experts=1,
        moe_intermediate_size=64, n_group=8, topk_group=4, routed_scaling_factor=2.5,
        max_position_embeddings=2048)


def cpu_time(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def interleaved(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()
    names = list(fns)
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            times[name].append(cpu_time(fns[name]))
    return times


def decode_minimoe(model: minimoe.Transformer, prompt: torch.Tensor, steps: torch.Tensor) -> Callable[[], None]:
    """A closure timing ``len(steps)`` cached single-token forwards after a prefill done here, untimed."""
    state = {}

    def prefill() -> None:
        state["cache"] = model.new_cache()
        model(prompt, cache=state["cache"])

    def run() -> None:
        cache = state["cache"]
        for t in range(steps.shape[1]):
            model(steps[:, t:t + 1], cache=cache)

    return prefill, run


def decode_hf(hf, prompt: torch.Tensor, steps: torch.Tensor) -> tuple[Callable, Callable]:
    from transformers.cache_utils import DynamicCache
    state = {}

    def prefill() -> None:
        state["cache"] = DynamicCache(config=hf.config)
        hf(prompt, past_key_values=state["cache"], use_cache=True)

    def run() -> None:
        cache = state["cache"]
        for t in range(steps.shape[1]):
            hf(steps[:, t:t + 1], past_key_values=cache, use_cache=True)

    return prefill, run


def profile(model: minimoe.Transformer, tokens: torch.Tensor) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        model(tokens)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny config, short sequences (tests)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables for minimoe")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = bench_config(args.quick)
    batch, seq, prompt_len, n_steps = (2, 32, 64, 8) if args.quick else (4, 256, 1024, 64)
    reps = 2 if args.quick else args.reps

    model = minimoe.Transformer(cfg).eval()
    with torch.no_grad():
        for layer in model.layers:
            if getattr(layer.ffn, "router", None) is not None:
                layer.ffn.router.bias.normal_(std=0.01)
    hf = to_hf(model).eval()
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq))
    with torch.inference_mode():
        torch.testing.assert_close(model(tokens).logits, hf(tokens).logits, rtol=1e-3, atol=1e-4)
    print(f"torch {torch.__version__}, torch.set_num_threads({args.threads}), float32, process CPU time, "
          f"{reps} interleaved repetitions; transformers attn_implementation={hf.config._attn_implementation!r}, "
          f"experts_implementation={getattr(hf.config, '_experts_implementation', None)!r}")
    print(f"config: {cfg.num_hidden_layers} layers ({cfg.first_k_dense_replace} dense), D {cfg.hidden_size}, "
          f"{cfg.num_attention_heads} heads, kv_lora_rank {cfg.kv_lora_rank}, {cfg.n_routed_experts} routed "
          f"experts top-{cfg.num_experts_per_tok} + {cfg.n_shared_experts} shared")

    ratios = {}
    with torch.inference_mode():
        if args.profile:
            profile(model, tokens)
        times = interleaved({"minimoe": lambda: model(tokens), "transformers": lambda: hf(tokens)}, reps)
        ratios["prefill"] = statistics.median(a / b for a, b in zip(times["minimoe"], times["transformers"]))
        print(f"prefill {batch}x{seq}: minimoe {1000 * statistics.median(times['minimoe']):.1f} ms, transformers "
              f"{1000 * statistics.median(times['transformers']):.1f} ms")

        model.set_attn_mode("absorbed")
        prompt = torch.randint(0, cfg.vocab_size, (1, prompt_len))
        steps = torch.randint(0, cfg.vocab_size, (1, n_steps))
        ours_prefill, ours_run = decode_minimoe(model, prompt, steps)
        hf_prefill, hf_run = decode_hf(hf, prompt, steps)
        times = {"minimoe": [], "transformers": []}
        for rep in range(reps + 1):
            order = [("minimoe", ours_prefill, ours_run), ("transformers", hf_prefill, hf_run)]
            for name, pre, run in order if rep % 2 == 0 else order[::-1]:
                pre()
                elapsed = cpu_time(run)
                if rep:  # the first round is a warm-up
                    times[name].append(elapsed)
        ratios["decode"] = statistics.median(a / b for a, b in zip(times["minimoe"], times["transformers"]))
        print(f"decode {n_steps} tokens after {prompt_len}: minimoe {statistics.median(times['minimoe']):.3f} s, "
              f"transformers {statistics.median(times['transformers']):.3f} s")
        if args.profile:
            from torch.profiler import ProfilerActivity, profile as torch_profile
            ours_prefill()
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                ours_run()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    for name, ratio in ratios.items():
        limit = TARGETS[name]
        print(f"{name}: minimoe takes {ratio:.2f}x the time of transformers "
              f"(target <= {limit}x: {'met' if ratio <= limit else 'missed'})")


if __name__ == "__main__":
    main()
