"""MoE dispatch: forward and forward+backward time of one DeepSeekMoE layer against alternatives.

Same config, same weights, same tokens for every implementation:

- ``minimoe loop``: ``DeepSeekMoE`` with ``experts_impl="loop"`` (what ``"auto"`` picks on a CPU);
- ``minimoe grouped_mm``: the same layer with ``experts_impl="grouped_mm"``;
- ``HF eager`` / ``HF grouped_mm``: transformers' ``DeepseekV3MoE`` with our weights copied in
  (``minimoe.interop.state_dict_to_hf``), with its per-expert loop and with its ``grouped_mm`` implementation
  (the default a ``from_pretrained`` model picks when torch offers ``grouped_mm``);
- ``naive mask loop``: a loop over all E experts that finds each expert's tokens with a mask, as early MoE code did;
- ``dense SwiGLU``: one MLP with the same active width (K + N_s) · moe_intermediate_size, hence the same FLOPs as
  the routed + shared experts: the cost of the computation without any dispatch.

Default config: DeepSeek-V2-Lite's expert layout (64 routed experts, top-6, 2 shared; DeepSeek-V2 App. B.1) with V3
routing (sigmoid, noaux_tc, 8 groups keep 4) at a CPU-sized width (D 512, moe_intermediate_size 256) and 4096
tokens, i.e. 384 tokens per expert on average: wide enough that each expert's matrix product dominates its Python
overhead, as on real hardware, and one forward pass stays about a second on one core.

Profile (torch.profiler, forward of ``minimoe loop`` on this config): ~85% of self time is ``aten::mm`` in the
experts' SwiGLUs (3 per expert that received tokens, plus the shared expert), the rest ``index_select`` /
``index_add_`` (~3% each), SiLU and the products, ``topk`` / ``sort`` of the routing. Timed stage by stage (user
time, idle, one thread): the routed experts' and the shared expert's matrix products together took what the dense
SwiGLU took (292 against 289 ms: 384-row products run at the speed of 4096-row ones); on top of them came routing
10 ms (the router's product 4 ms, the groups' top-2 3 ms, the final top-k 2 ms), gathering the tokens 7 ms,
weighting by g 7 ms, scattering them back 4 ms and sorting 1 ms, about 10% of the dense SwiGLU's user time, and
every piece is needed. Two changes that alter float rounding (adding the routed outputs straight into the shared
expert's output; scaling each expert's hidden rows by g_{i,t}, width moe_intermediate_size, instead of its outputs,
width D), timed together against the layer as it is, interleaved with the dense SwiGLU: 1.11-1.14x its user time
either way, no gain; not adopted (the shipped checkpoint and every trained number the book quotes would change with
them). Two that keep every bit (weighting each expert's output in place, adding the shared expert's output in
place) save allocations, hence page faults, and no user time.

The system time is what moves the ratio: page faults on freshly allocated tensors, above all the dense SwiGLU's
(4096, 2048) activations, 32 MiB each, which a process pays 0 to 60 ms per call depending on the state of its
heap. So the script prints the ratio twice, of the process CPU time (user + system, the budget's measure) and of
the user time alone. Idle, ``--reps 9``, five processes: forward 1.01, 1.05, 1.01, 1.04 and 1.08x the dense
SwiGLU, user time alone 1.10-1.14x; forward+backward 1.08-1.11x (1.06x before the in-place changes).

The routed computation has the FLOPs of the dense SwiGLU of the same active width, which is therefore a floor: the
layer's budget is at most 1.05x that dense SwiGLU (the limit is 1.0x), and faster than transformers'
``DeepseekV3MoE`` on the same weights (whose ``grouped_mm`` experts do the same matrix products: on a CPU it is
near the same floor, so no dispatch can be much faster than it).

The implementations run interleaved (one of each per repetition, in rotating order); the table gives the median
time and, per implementation, the median over repetitions of its time divided by minimoe loop's time in the same
repetition. Times are the process's CPU time, user + system (``resource.getrusage``): on a machine shared with
other jobs it stays what an idle machine's wall clock would show with one thread, where the wall clock would mostly
measure the others. Run: ``python benchmarks/moe_dispatch.py`` (about 3 minutes on one core), ``--quick`` for tests.
"""

from __future__ import annotations

import argparse
import resource
import statistics
from collections.abc import Callable

import torch
from transformers import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

from minimoe.config import ModelConfig
from minimoe.interop import hf_config_kwargs, state_dict_to_hf
from minimoe.moe.dispatch import grouped_mm_supported
from minimoe.moe.experts import MLP, DeepSeekMoE

TARGETS = {"HF": 1.0, "dense SwiGLU": 1.05}  # the budget: minimoe loop at most this × the named one


def bench_config(quick: bool) -> ModelConfig:
    if quick:
        return ModelConfig.from_preset("tiny-v3", num_hidden_layers=1, first_k_dense_replace=0)
    return ModelConfig.from_preset("tiny-v3", num_hidden_layers=1, first_k_dense_replace=0, hidden_size=512,
                                   n_routed_experts=64, num_experts_per_tok=6, n_shared_experts=2,
                                   moe_intermediate_size=256, n_group=8, topk_group=4)


def hf_moe(moe: DeepSeekMoE, implementation: str) -> DeepseekV3MoE:
    """transformers' layer holding a copy of ``moe``'s weights (3-D expert stacks, ``e_score_correction_bias``)."""
    cfg = moe.cfg
    _, kwargs = hf_config_kwargs(cfg)
    hf_config = DeepseekV3Config(**kwargs)
    hf_config._experts_implementation = implementation
    state = state_dict_to_hf({f"layers.0.ffn.{k}": v for k, v in moe.state_dict().items()}, cfg)
    layer = DeepseekV3MoE(hf_config)
    layer.load_state_dict({k.removeprefix("model.layers.0.mlp."): v for k, v in state.items()})
    return layer


def naive_mask_loop(moe: DeepSeekMoE) -> Callable[[torch.Tensor], torch.Tensor]:
    """Every expert in turn finds its tokens with ``nonzero`` on a mask (as Mixtral's first transformers code did)."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        sel = moe.router(x)
        weights, indices = sel.gate_weights, sel.experts
        out = torch.zeros_like(x)  # (N, D)
        for e, expert in enumerate(moe.experts):
            token, slot = (indices == e).nonzero(as_tuple=True)  # (n_e,), (n_e,)
            out.index_add_(0, token, expert(x[token]) * weights[token, slot, None])
        return out + moe.shared_experts(x)
    return forward


def dense_equivalent(cfg: ModelConfig) -> MLP:
    """A SwiGLU MLP as wide as the experts one token activates: (K + N_s) · moe_intermediate_size."""
    active = (cfg.num_experts_per_tok + cfg.n_shared_experts) * cfg.moe_intermediate_size
    return MLP(cfg.hidden_size, active)


def cpu_times() -> tuple[float, float]:
    """The process's user and system CPU seconds so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def time_once(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor,
              params: list[torch.nn.Parameter], backward: bool) -> tuple[float, float]:
    """One call's (user, system) CPU seconds; their sum is the process CPU time the table reports."""
    for p in params:
        p.grad = None
    if backward:
        x = x.detach().requires_grad_()
        start = cpu_times()
        fn(x).backward(grad)
    else:
        with torch.no_grad():
            start = cpu_times()
            fn(x)
    end = cpu_times()
    return end[0] - start[0], end[1] - start[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny config and one repetition (tests)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    tokens, reps = (64, 2) if args.quick else (args.tokens, args.reps)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = bench_config(args.quick)
    moe = DeepSeekMoE(cfg, experts_impl="loop")
    moe.router.bias.normal_(std=0.01)
    grouped = DeepSeekMoE(cfg, experts_impl="grouped_mm")
    grouped.load_state_dict(moe.state_dict())
    x = torch.randn(tokens, cfg.hidden_size)
    grad = torch.randn(tokens, cfg.hidden_size)
    impls: dict[str, tuple[Callable, list]] = {"minimoe loop": (moe, list(moe.parameters()))}
    if grouped_mm_supported(x):
        impls["minimoe grouped_mm"] = (grouped, list(grouped.parameters()))
    for implementation in ("eager", "grouped_mm"):
        layer = hf_moe(moe, implementation)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), moe(x), rtol=1e-4, atol=1e-5)
        impls[f"HF {implementation}"] = (layer, list(layer.parameters()))
    impls["naive mask loop"] = (naive_mask_loop(moe), list(moe.parameters()))
    dense = dense_equivalent(cfg)
    impls["dense SwiGLU"] = (dense, list(dense.parameters()))

    print(f"torch {torch.__version__}, torch.set_num_threads({args.threads}), {tokens} tokens, D "
          f"{cfg.hidden_size}, {cfg.n_routed_experts} routed experts top-{cfg.num_experts_per_tok} + "
          f"{cfg.n_shared_experts} shared, moe_intermediate_size {cfg.moe_intermediate_size}, dense width "
          f"{dense.w1.out_features}, float32, {reps} interleaved repetitions, process CPU time")
    names = list(impls)
    results, user = {}, {}
    for backward in (False, True):
        times: dict[str, list[float]] = {n: [] for n in names}
        user_times: dict[str, list[float]] = {n: [] for n in names}
        for fn, params in impls.values():  # warm-up
            time_once(fn, x, grad, params, backward)
        for rep in range(reps):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                fn, params = impls[name]
                user_s, system_s = time_once(fn, x, grad, params, backward)
                times[name].append(user_s + system_s)
                user_times[name].append(user_s)
        results[backward], user[backward] = times, user_times

    print(f"{'implementation':<22}{'forward ms':>12}{'/ minimoe':>11}{'fwd+bwd ms':>13}{'/ minimoe':>11}")
    ratio_to = {}
    for name in names:
        row = f"{name:<22}"
        for backward in (False, True):
            times = results[backward]
            ratio = statistics.median(t / ref for t, ref in zip(times[name], times["minimoe loop"]))
            ratio_to[name, backward] = ratio
            row += f"{1000 * statistics.median(times[name]):>12.1f}{ratio:>10.2f}x "
        print(row)
    for backward, label in ((False, "forward"), (True, "forward+backward")):
        fastest_hf = min(ratio_to["HF eager", backward], ratio_to["HF grouped_mm", backward])
        for other, ratio in (("the faster HF", fastest_hf), ("dense SwiGLU", ratio_to["dense SwiGLU", backward])):
            ours, limit = 1 / ratio, TARGETS["HF" if other == "the faster HF" else other]
            print(f"{label}: minimoe loop takes {ours:.2f}x the time of {other} "
                  f"(target <= {limit}x: {'met' if ours <= limit else 'missed'})")
        dense_user = statistics.median(t / ref for t, ref in zip(user[backward]["minimoe loop"],
                                                                 user[backward]["dense SwiGLU"]))
        print(f"{label}: user time alone, minimoe loop takes {dense_user:.2f}x the dense SwiGLU's (system time, "
              f"page faults on fresh tensors, left out)")


if __name__ == "__main__":
    main()
