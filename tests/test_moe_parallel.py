"""minimoe.moe.parallel: expert parallelism on 2 gloo processes equals DeepSeekMoE, forward and backward."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from minimoe.config import ModelConfig
from minimoe.moe.experts import DeepSeekMoE
from minimoe.moe.parallel import all_reduce_replicated_grads, expert_parallel_moe, expert_shard, shard_experts

WORLD = 2


def _worker(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for preset in ("tiny-v2", "tiny-v3"):
            _check_against_single_process(rank, preset)
        with pytest.raises(ValueError, match="divisible by the world size"):
            expert_parallel_moe(ModelConfig.from_preset("tiny-v2", n_routed_experts=5, n_group=1, topk_group=1))
    finally:
        dist.destroy_process_group()


def _check_against_single_process(rank: int, preset: str) -> None:
    torch.manual_seed(0)  # same weights and tokens on both ranks
    cfg = ModelConfig.from_preset(preset, n_routed_experts=8, n_group=2, topk_group=1)
    moe = DeepSeekMoE(cfg).double()
    if moe.router.bias is not None:
        moe.router.bias.normal_(std=0.1)
    x = torch.randn(WORLD, 3, 7, cfg.hidden_size, dtype=torch.float64)  # (W, B, T, d): rank r owns x[r]
    seed = torch.randn_like(x)

    x_all = x.clone().requires_grad_()
    y_ref = moe(x_all.view(-1, 7, cfg.hidden_size)).view_as(x)  # single process, all tokens
    (y_ref * seed).sum().backward()
    x_local = x[rank].clone().requires_grad_()
    layer = shard_experts(moe)
    assert isinstance(layer, DeepSeekMoE)  # expert parallelism is a dispatcher of the one MoE module
    y, record = layer.forward_routed(x_local)
    (y * seed[rank]).sum().backward()

    torch.testing.assert_close(y, y_ref[rank].detach())
    torch.testing.assert_close(x_local.grad, x_all.grad[rank])
    assert record.scores.shape == (3, 7, 8) and record.experts.shape == (3, 7, 2)

    all_reduce_replicated_grads(layer)
    local = {name: _grad(p) for name, p in layer.named_parameters()}
    for name, p in moe.named_parameters():
        if name.startswith("experts."):
            expert, rest = name.removeprefix("experts.").split(".", 1)
            mine = int(expert) in layer.dispatcher.shard
            grad = local[f"experts.{int(expert) - layer.dispatcher.shard.start}.{rest}"] if mine else torch.zeros_like(p)
            gathered = [torch.empty_like(p) for _ in range(WORLD)]
            dist.all_gather(gathered, grad)  # every expert's gradient, from the rank that holds it
            owner = int(expert) // len(layer.experts)
            torch.testing.assert_close(gathered[owner], _grad(p), msg=name)
        else:
            tol = {"rtol": 1e-5, "atol": 1e-5} if name.startswith("router.") else {}  # the router runs in float32
            torch.testing.assert_close(local[name], _grad(p), msg=name, **tol)


def _grad(p: torch.nn.Parameter) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad  # an expert that got no token has no gradient


@pytest.mark.slow
def test_expert_parallel_equals_single_process(tmp_path):
    """Outputs, input gradients and (gathered) parameter gradients, V2 and V3 routing; E % W != 0 is refused."""
    mp.spawn(_worker, args=(str(tmp_path / "init"),), nprocs=WORLD, join=True)


def test_expert_shard_needs_divisible_world_size():
    assert expert_shard(8, 2, 1) == range(4, 8)
    with pytest.raises(ValueError, match=r"n_routed_experts \(8\) must be divisible by the world size \(3\)"):
        expert_shard(8, 3, 0)
