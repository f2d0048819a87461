"""Expert parallelism: the routed experts of a DeepSeekMoE sharded across processes, tokens sent to them by all-to-all.

With E routed experts on W processes (ranks), rank r holds experts r·E/W … (r+1)·E/W − 1; the router and the shared
experts are replicated. Every rank routes its own tokens, then:

1. dispatch: sort its (token, expert) assignments by expert, hence by destination rank, and send every rank its
   rows with one ``all_to_all_single`` of variable split sizes (the per-expert counts travel first);
2. compute: run its local experts on the rows it received, grouped by expert (``run_experts``);
3. combine: send the outputs back with the reverse all-to-all, weight them by g_{i,t} and add them to their tokens.

This exchange is the traffic DeepSeek-V2's device-limited routing and communication balance loss bound (DeepSeek-V2
§2.2.2, §2.2.3). The all-to-all is differentiable (``AllToAll``): its backward is the all-to-all with the split sizes
swapped, so gradients travel back to the ranks the tokens came from. Gradients of the replicated router and shared
experts stay per rank, as in data parallelism; ``all_reduce_replicated_grads`` sums them.

This is a dispatch strategy of the one ``DeepSeekMoE`` module, not a second MoE: ``shard_experts(moe)`` returns a
``DeepSeekMoE`` with this rank's experts and ``dispatcher=AllToAllDispatcher(group, shard)``; routing, shared
experts and the ``RoutingRecord`` are the module's own. (DeepSeek-V3's
``inference/model.py`` shards the experts the same way but gives every rank all tokens and sums with one
all_reduce.)

Demo, 2 processes (gloo on CPU, nccl on GPUs): ``torchrun --nproc_per_node 2 -m minimoe.moe.parallel``.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

from minimoe.config import ModelConfig
from minimoe.moe.dispatch import resolve_impl, run_experts, sort_by_expert
from minimoe.moe.experts import DeepSeekMoE


def _exchange(x: torch.Tensor, input_splits: list[int], output_splits: list[int], group) -> torch.Tensor:
    out = x.new_empty(sum(output_splits), *x.shape[1:])
    dist.all_to_all_single(out, x.contiguous(), output_splits, input_splits, group=group)
    return out


class AllToAll(torch.autograd.Function):
    """``dist.all_to_all_single`` with autograd: rows ``input_splits[r]`` go to rank r, ``output_splits[r]`` come
    from rank r; the backward pass sends the gradients back the same way with the splits swapped.

    Shapes: x (sum(input_splits), ...) -> (sum(output_splits), ...).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, input_splits: list[int], output_splits: list[int], group) -> torch.Tensor:
        ctx.splits, ctx.group = (input_splits, output_splits), group
        return _exchange(x, input_splits, output_splits, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        input_splits, output_splits = ctx.splits
        return _exchange(grad, output_splits, input_splits, ctx.group), None, None, None


def expert_shard(n_experts: int, world_size: int, rank: int) -> range:
    """The routed experts rank ``rank`` holds: a contiguous block of E / world_size.

    Shapes: none (integers -> a range of expert indices).
    """
    if n_experts % world_size != 0:
        raise ValueError(f"n_routed_experts ({n_experts}) must be divisible by the world size ({world_size}) "
                         "for expert parallelism")
    per_rank = n_experts // world_size
    return range(rank * per_rank, (rank + 1) * per_rank)


class AllToAllDispatcher:
    """A ``DeepSeekMoE.dispatcher`` for expert parallelism: this rank holds the routed experts ``shard`` (global
    indices), and tokens travel to the ranks of ``group`` that hold their experts and back by all-to-all.

    Capacity dropping is not offered here (``keep`` must be None).
    """

    def __init__(self, group: dist.ProcessGroup | None, shard: range) -> None:
        self.group, self.shard = group, shard
        self.world_size = dist.get_world_size(group)

    def __call__(self, moe: DeepSeekMoE, u: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                 keep: torch.Tensor | None) -> torch.Tensor:
        """Σ_i g_{i,t} FFN^(r)_i(u_t) over the ranks. Shapes: u (N, d) this rank's tokens, weights, indices (N, K)
        -> (N, d)."""
        if keep is not None:
            raise ValueError("capacity_factor is not offered with expert parallelism: set moe.capacity_factor = None")
        world, n_local = self.world_size, len(moe.experts)
        order, counts = sort_by_expert(indices, moe.cfg.n_routed_experts)  # (N·K,), (E,) sorted by destination
        token = order // indices.shape[1]  # (N·K,)

        # 1. dispatch: tokens per (source rank, local expert) first, then the rows themselves
        recv_counts = torch.empty_like(counts)
        dist.all_to_all_single(recv_counts, counts, group=self.group)  # (W·E_local,) from each source rank
        send_splits = counts.view(world, n_local).sum(1).tolist()  # rows to each rank
        recv_splits = recv_counts.view(world, n_local).sum(1).tolist()  # rows from each rank
        x_recv = AllToAll.apply(u.index_select(0, token), send_splits, recv_splits, self.group)  # (M, d)

        # 2. compute: the received rows are grouped by source rank, then expert; regroup them by expert
        local_expert = torch.arange(n_local, device=u.device).repeat(world)  # (W·E_local,)
        by_expert = local_expert.repeat_interleave(recv_counts).argsort(stable=True)  # (M,)
        y = run_experts(x_recv.index_select(0, by_expert), recv_counts.view(world, n_local).sum(0), moe.experts,
                        resolve_impl(moe.experts_impl, u))  # (M, d) grouped by expert
        y_recv = y.index_select(0, by_expert.argsort())  # (M, d) back in the received order

        # 3. combine: outputs return to their ranks, weighted by g_{i,t} and added per token
        y_sorted = AllToAll.apply(y_recv, recv_splits, send_splits, self.group)  # (N·K, d)
        gate_weights = weights.reshape(-1)[order].unsqueeze(-1).to(u.dtype)  # (N·K, 1)
        return torch.zeros_like(u).index_add_(0, token, y_sorted * gate_weights)  # (N, d)

    def __repr__(self) -> str:
        return f"AllToAllDispatcher(world_size={self.world_size}, shard={self.shard.start}-{self.shard.stop - 1})"


def expert_parallel_moe(cfg: ModelConfig, group: dist.ProcessGroup | None = None,
                        experts_impl: str = "auto") -> DeepSeekMoE:
    """A ``DeepSeekMoE`` holding this rank's shard of the routed experts, with an ``AllToAllDispatcher``."""
    if not cfg.is_moe:
        raise ValueError("expert parallelism needs n_routed_experts > 0")
    shard = expert_shard(cfg.n_routed_experts, dist.get_world_size(group), dist.get_rank(group))
    return DeepSeekMoE(cfg, experts_impl=experts_impl, dispatcher=AllToAllDispatcher(group, shard),
                       n_local_experts=len(shard))


def shard_experts(moe: DeepSeekMoE, group: dist.ProcessGroup | None = None) -> DeepSeekMoE:
    """This rank's part of the single-process layer ``moe``: its shard of the routed experts (renumbered from 0),
    the router and the shared experts, dispatching by all-to-all."""
    weight = moe.router.weight
    layer = expert_parallel_moe(moe.cfg, group, moe.experts_impl).to(device=weight.device, dtype=weight.dtype)
    layer.load_state_dict(shard_state_dict(moe.state_dict(), layer.dispatcher.shard))
    return layer


def shard_state_dict(state: dict[str, torch.Tensor], shard: range) -> dict[str, torch.Tensor]:
    """A ``DeepSeekMoE`` state dict cut to ``shard``: ``experts.{e}.*`` → ``experts.{e - shard.start}.*``."""
    out = {}
    for key, tensor in state.items():
        if key.startswith("experts."):
            expert, rest = key.removeprefix("experts.").split(".", 1)
            if int(expert) in shard:
                out[f"experts.{int(expert) - shard.start}.{rest}"] = tensor
        else:
            out[key] = tensor
    return out


def replicated_parameters(moe: DeepSeekMoE) -> list[nn.Parameter]:
    """The router's and the shared experts' parameters, which every rank holds."""
    shared = [] if moe.shared_experts is None else list(moe.shared_experts.parameters())
    return list(moe.router.parameters()) + shared


def all_reduce_replicated_grads(moe: DeepSeekMoE, group: dist.ProcessGroup | None = None) -> None:
    """Sum the replicated parameters' gradients over the ranks (what DistributedDataParallel would do)."""
    for p in replicated_parameters(moe):
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)


def main() -> None:
    """Check the sharded layer against the single-process one on every rank; print what each rank exchanged."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if backend == "nccl" else torch.device("cpu")
    torch.manual_seed(0)  # the same weights and tokens on every rank
    cfg = ModelConfig.from_preset("small-v3")
    moe = DeepSeekMoE(cfg).to(device)
    tokens = torch.randn(world, 256, cfg.hidden_size, device=device)  # (W, N, d): rank r owns tokens[r]
    layer = shard_experts(moe)
    y, record = layer.forward_routed(tokens[rank])
    y.square().sum().backward()
    reference = moe(tokens.view(-1, cfg.hidden_size)).view_as(tokens)[rank]  # (N, d)
    sent = torch.bincount(record.experts.flatten() // len(layer.experts), minlength=world).tolist()
    shard = layer.dispatcher.shard
    print(f"rank {rank}/{world} ({backend}): experts {shard.start}-{shard.stop - 1}, assignments sent "
          f"to each rank {sent}, max |y - single process| = {(y - reference).abs().max().item():.2e}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
