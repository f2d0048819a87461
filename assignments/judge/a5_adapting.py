"""The judge of a5_adapting: the LoRA forward pass, merge and unmerge, vocabulary extension, a replay sampler over
epochs, and the gate values of a router grown by new experts (12 points over 32 items).

References: the judge's own ``minimoe.adapt.LoRALinear`` (forward and merge, Hu et al. 2021 Eq. (3)) and
``minimoe.moe.gate`` (V3 Eq. (13)-(16), V2's softmax top-K), trusted; new embedding rows as
``minimoe.adapt.extend_vocabulary`` makes them. The replay sampler is random: its items check the properties the
lab states (exact counts, no repeats, reshuffled pools, determinism), never one draw. The sandbox's copy of
``minimoe`` raises "not available while grading" in ``minimoe.adapt``'s tools and in the router (:data:`STUBS`).
"""

from __future__ import annotations

import torch
from torch import nn

from judge.core import Failed, Item, call, check_tensor, unchanged
from minimoe.adapt import LoRALinear
from minimoe.moe import gate

STUBS = {"minimoe.adapt": ["LoRALinear.forward", "LoRALinear.delta_weight", "LoRALinear.weight",
                           "LoRALinear.merge", "LoRALinear.unmerge", "merge_lora", "unmerge_lora", "unload_lora",
                           "extend_vocabulary", "replay_rows", "add_experts"],
         "minimoe.moe.gate": ["affinity_scores", "group_mask", "select_experts", "Router.forward"]}
F32, F64, BF16 = torch.float32, torch.float64, torch.bfloat16
TOL = {F64: 1e-12, F32: 1e-5, BF16: 1e-2}


def _int(gen: torch.Generator, low: int, high: int) -> int:
    return int(torch.randint(low, high, (1,), generator=gen))


def _lora(w0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha) -> LoRALinear:
    """minimoe's LoRA layer on W0 (no bias) with the given A, B and alpha, in their dtype."""
    d, k = w0.shape
    layer = LoRALinear(nn.Linear(k, d, bias=False, dtype=a.dtype), a.shape[0], alpha)
    with torch.no_grad():
        layer.base.weight.copy_(w0)
        layer.lora_A.copy_(a)
        layer.lora_B.copy_(b)
    return layer


def _operands(gen, d: int, k: int, r: int, dtype, zero_b: bool = False):
    w0 = torch.randn(d, k, generator=gen, dtype=F64) / k ** 0.5
    a = torch.randn(r, k, generator=gen, dtype=F64) / r
    b = torch.zeros(d, r, dtype=F64) if zero_b else 0.1 * torch.randn(d, r, generator=gen, dtype=F64)
    return w0.to(dtype), a.to(dtype), b.to(dtype)


# -- Part 1: lora_forward -----------------------------------------------------------------------------------------
def _forward(lead: tuple[int, ...], d: int, k: int, r: int, alpha, dtype, zero_b: bool = False):
    def check(remote, gen):
        w0, a, b = _operands(gen, d, k, r, dtype, zero_b)
        x = torch.randn(*lead, k, generator=gen, dtype=F64).to(dtype)
        with torch.no_grad():
            want = _lora(w0, a, b, alpha)(x)
        reply = call(remote, "lora_forward", x, w0, a, b, alpha, full=True)
        unchanged("lora_forward", reply, (x, w0, a, b))
        check_tensor("lora_forward", reply["value"], want, TOL[dtype])
    return check


# -- Part 2: lora_merge, lora_unmerge -----------------------------------------------------------------------------
def _merged(w0, a, b, alpha) -> torch.Tensor:
    """W0 + (alpha / r) B A by minimoe's LoRALinear.merge, in float64, rounded once to w0's dtype."""
    layer = _lora(w0.double(), a.double(), b.double(), alpha)
    layer.merge()
    return layer.base.weight.detach().to(w0.dtype)


def _merge_call(remote, fn, w, a, b, alpha):
    reply = call(remote, fn, w, a, b, alpha, full=True)
    unchanged(fn, reply, (w, a, b))
    return reply["value"]


def _merge(d: int, k: int, r: int, alpha, dtype, adapter_dtype=None):
    def check(remote, gen):
        w0, a, b = _operands(gen, d, k, r, F64)
        w0, a, b = w0.to(dtype), a.to(adapter_dtype or dtype), b.to(adapter_dtype or dtype)
        check_tensor("lora_merge", _merge_call(remote, "lora_merge", w0, a, b, alpha), _merged(w0, a, b, alpha),
                     TOL[dtype])
    return check


def _unmerge(remote, gen):
    """W - (alpha / r) B A: the merged weight of minimoe's LoRALinear gives W0 back."""
    w0, a, b = _operands(gen, 12, 20, 4, F64)
    w = _merged(w0, a, b, 8.0)
    layer = _lora(w0, a, b, 8.0)
    layer.merge()
    layer.unmerge()
    check_tensor("lora_unmerge", _merge_call(remote, "lora_unmerge", w, a, b, 8.0), layer.base.weight.detach(),
                 1e-12)


def _unmerge_float32(remote, gen):
    w, a, b = _operands(gen, 6, 10, 2, F32)
    want = (w.double() - 4.0 * b.double() @ a.double()).float()
    check_tensor("lora_unmerge", _merge_call(remote, "lora_unmerge", w, a, b, 8), want, 1e-6)


def _round_trip(remote, gen):
    """The student's unmerge of the student's merge: W0 to float64's rounding."""
    w0, a, b = _operands(gen, 10, 16, 4, F64)
    merged = _merge_call(remote, "lora_merge", w0, a, b, 16.0)
    check_tensor("lora_merge", merged, _merged(w0, a, b, 16.0), 1e-12)
    check_tensor("lora_unmerge", _merge_call(remote, "lora_unmerge", merged, a, b, 16.0), w0, 1e-12,
                 "the round trip does not give W0 back")


def _merged_serves(remote, gen):
    """x W^T with the student's merged weight equals the LoRA layer's output (Hu et al. §4.1)."""
    w0, a, b = _operands(gen, 8, 12, 2, F64)
    x = torch.randn(5, 12, generator=gen, dtype=F64)
    merged = _merge_call(remote, "lora_merge", w0, a, b, 5.0)
    if type(merged) is not torch.Tensor or merged.shape != w0.shape or merged.dtype != F64:
        raise Failed("lora_merge: wrong type, dtype or shape")
    with torch.no_grad():
        check_tensor("lora_merge", x @ merged.T, _lora(w0, a, b, 5.0)(x), 1e-12,
                     "the merged weight does not give the LoRA layer's output")


# -- Part 3: extend_embedding -------------------------------------------------------------------------------------
def _extended(weight: torch.Tensor, sources: list[list[int]]) -> torch.Tensor:
    """The old rows, then per new token the mean of its source rows (all rows for an empty list), as
    ``minimoe.adapt.extend_vocabulary`` builds the embedding."""
    rows = [weight[list(ids)].mean(0) if ids else weight.mean(0) for ids in sources]
    return torch.cat([weight, torch.stack(rows)])


def _extend_call(remote, weight, n_new, init):
    reply = call(remote, "extend_embedding", weight, n_new, init, full=True)
    unchanged("extend_embedding", reply, (weight,))
    return reply["value"]


def _extend(v: int, d: int, n_new: int, dtype, kind: str):
    """kind "mean", "mapped" (lists of 1-4 ids, duplicates allowed), "empty" (some empty lists), "single" (one id
    each: exact copies), or "bitwise" (the old rows only, compared bit for bit)."""
    def check(remote, gen):
        weight = torch.randn(v, d, generator=gen, dtype=F64).to(dtype)
        if kind in ("mean", "bitwise"):
            init, sources = "mean", [[]] * n_new
        elif kind == "single":
            sources = [[_int(gen, 0, v)] for _ in range(n_new)]
            init = sources
        else:
            sources = [torch.randint(0, v, (_int(gen, 1, 5),), generator=gen).tolist() for _ in range(n_new)]
            if kind == "empty":
                sources[_int(gen, 0, n_new)] = []
            init = sources
        got = _extend_call(remote, weight, n_new, init)
        want = _extended(weight, sources)
        if kind == "bitwise":
            check_tensor("extend_embedding", got, want, TOL[dtype])
            if not torch.equal(got[:v], weight):
                raise Failed("extend_embedding: the old rows are not copied bitwise")
        elif kind == "single":
            check_tensor("extend_embedding", got, want, 0.0, "a single source id is not copied exactly")
        else:
            check_tensor("extend_embedding", got, want, TOL[dtype])
    return check


# -- Part 4: replay_epoch -----------------------------------------------------------------------------------------
def _epoch(remote, n_local, n_original, batch_size, fraction, seed):
    """The student's epoch, checked for type, dtype, shapes and index ranges; returns (locals, originals)."""
    value = call(remote, "replay_epoch", n_local, n_original, batch_size, fraction, seed)
    if not isinstance(value, list) or any(not isinstance(b, (tuple, list)) or len(b) != 2
                                          or any(type(t) is not torch.Tensor for t in b) for b in value):
        raise Failed("replay_epoch: wrong type (a list of (local, original) tuples of tensors is expected)")
    if any(t.dtype != torch.int64 for b in value for t in b):
        raise Failed("replay_epoch: wrong dtype")
    n_replay = round(fraction * batch_size)
    if len(value) != n_local // (batch_size - n_replay) or any(
            tuple(l.shape) != (batch_size - n_replay,) or tuple(o.shape) != (n_replay,) for l, o in value):
        raise Failed("replay_epoch: wrong shape (the number of batches, or of rows of each kind in a batch)")
    local = [int(i) for l, _ in value for i in l]
    original = [int(i) for _, o in value for i in o]
    if any(not 0 <= i < n_local for i in local) or any(not 0 <= i < n_original for i in original):
        raise Failed("replay_epoch: an index outside its data")
    return local, original


def _replay_counts(remote, gen):
    """Exact counts in every batch, for fractions whose product with the batch size is not a tie."""
    for n_local, batch_size, fraction in ((60, 8, 0.25), (49, 10, 0.3), (76, 7, 0.4)):
        _epoch(remote, n_local, 1000, batch_size, fraction, _int(gen, 0, 2**31))


def _replay_local(remote, gen):
    for n_local, batch_size, fraction in ((48, 8, 0.25), (90, 12, 0.5)):
        local, _ = _epoch(remote, n_local, 1000, batch_size, fraction, _int(gen, 0, 2**31))
        if sorted(local) != list(range(n_local)):
            raise Failed("replay_epoch: the local rows of an epoch are not each used once")


def _replay_original(remote, gen):
    """A pool larger than the epoch needs: no original index twice."""
    _, original = _epoch(remote, 60, _int(gen, 40, 60), 8, 0.375, _int(gen, 0, 2**31))
    if len(set(original)) != len(original):
        raise Failed("replay_epoch: an original row repeats while the pool lasts")


def _replay_random(remote, gen):
    """Shuffled (local and original), the same for a seed, different for another."""
    seed = _int(gen, 0, 2**31)
    first = _epoch(remote, 42, 200, 8, 0.25, seed)
    if first[0] == sorted(first[0]) or first[1] == sorted(first[1]):
        raise Failed("replay_epoch: the rows are not shuffled")
    if _epoch(remote, 42, 200, 8, 0.25, seed) != first:
        raise Failed("replay_epoch: the same seed gives another epoch")
    if _epoch(remote, 42, 200, 8, 0.25, seed + 1) == first:
        raise Failed("replay_epoch: another seed gives the same epoch")


def _replay_remainder(remote, gen):
    """n_local not a multiple of the local rows per batch: the remainder is dropped; fewer than one batch: none."""
    for n_local in (_int(gen, 31, 36), 3):
        local, _ = _epoch(remote, n_local, 500, 8, 0.25, _int(gen, 0, 2**31))
        if len(set(local)) != len(local):
            raise Failed("replay_epoch: a local row appears twice in an epoch")


def _replay_small_pool(remote, gen):
    """A pool of 5 to 7 original rows for 26 replayed rows: each run of n_original is a permutation of the pool,
    and the runs are not all in one order."""
    n_original = _int(gen, 5, 8)
    _, original = _epoch(remote, 78, n_original, 8, 0.25, _int(gen, 0, 2**31))
    runs = [original[i:i + n_original] for i in range(0, len(original), n_original)]
    if any(len(set(run)) != len(run) for run in runs) or any(sorted(run) != list(range(n_original))
                                                             for run in runs[:-1]):
        raise Failed("replay_epoch: a small original pool is not used up before it repeats")
    if all(run == runs[0] for run in runs[:-1]):
        raise Failed("replay_epoch: a small original pool is cycled in one order, not reshuffled")


def _replay_none(remote, gen):
    _epoch(remote, 5 * _int(gen, 4, 7), 100, 5, 0.0, _int(gen, 0, 2**31))


# -- Part 5: gates_with_new_experts -------------------------------------------------------------------------------
def _gates_reference(u, e_old, e_new, bias, k, scoring) -> torch.Tensor:
    """Dense (N, E) float32 gates by minimoe's router maths: V3's noaux_tc with normalisation, or V2's greedy."""
    logits = u.float() @ torch.cat([e_old, e_new]).float().T  # (N, E)
    scores = gate.affinity_scores(logits, scoring)
    if scoring == "sigmoid":
        sel = gate.select_experts(scores, k, topk_method="noaux_tc", bias=bias, norm_topk_prob=True)
    else:
        sel = gate.select_experts(scores, k, topk_method="greedy")
    return torch.zeros_like(scores).scatter(-1, sel.experts, sel.gate_weights)


def _margin(u, e_old, e_new, bias, k, scoring) -> float:
    """The smallest gap between a token's K-th and (K+1)-th selection score (inf when K selects every expert)."""
    logits = u.double() @ torch.cat([e_old, e_new]).double().T
    choice = logits.sigmoid() + bias.double() if scoring == "sigmoid" else logits.softmax(-1)
    if k >= choice.shape[-1]:
        return float("inf")
    top = choice.topk(k + 1, dim=-1).values
    return float((top[:, k - 1] - top[:, k]).min())


def _gates(n: int, d: int, e_old: int, e_new: int, k: int, scoring: str, dtype=F32, biased: bool = False):
    def check(remote, gen):
        while True:  # inputs whose K-th and (K+1)-th choices differ by > 1e-4: float32 rounding cannot swap them
            u = torch.randn(n, d, generator=gen, dtype=F64).to(dtype)
            old = torch.randn(e_old, d, generator=gen, dtype=F64).to(dtype) / d ** 0.5
            new = torch.randn(e_new, d, generator=gen, dtype=F64).to(dtype) / d ** 0.5
            bias = torch.zeros(e_old + e_new)
            if biased:  # large enough to change the selection of most tokens
                bias = 0.3 * torch.randn(e_old + e_new, generator=gen)
                bias[e_old:] += 0.2
            if _margin(u, old, new, bias, k, scoring) > 1e-4:
                break
        want = _gates_reference(u, old, new, bias, k, scoring)
        reply = call(remote, "gates_with_new_experts", u, old, new, bias, k, scoring, full=True)
        unchanged("gates_with_new_experts", reply, (u, old, new, bias))
        got = reply["value"]
        check_tensor("gates_with_new_experts", got, want, 1e-5)
    return check


ITEMS = [
    Item("test_lora_forward", "a batch of vectors, float64", 0.5, _forward((7,), 10, 12, 4, 8.0, F64)),
    Item("test_lora_forward", "tokens (B, T, k), float32 keeps its dtype", 0.5, _forward((2, 5), 8, 16, 4, 16, F32)),
    Item("test_lora_forward", "alpha not a multiple of r", 0.25, _forward((6,), 9, 11, 2, 3, F64)),
    Item("test_lora_forward", "edge case: B = 0 gives the frozen layer", 0.25,
         _forward((4,), 6, 8, 3, 6.0, F64, zero_b=True)),
    Item("test_lora_forward", "edge case: rank 1", 0.25, _forward((3, 2), 7, 5, 1, 2.0, F64)),
    Item("test_lora_forward", "edge case: a single vector (k,)", 0.25, _forward((), 5, 9, 2, 4.0, F64)),
    Item("test_lora_merge", "lora_merge, float64", 0.5, _merge(12, 20, 4, 8.0, F64)),
    Item("test_lora_merge", "lora_unmerge, float64", 0.5, _unmerge),
    Item("test_lora_merge", "unmerge(merge(W0)) gives W0 back", 0.25, _round_trip),
    Item("test_lora_merge", "the merged weight serves the LoRA layer's output", 0.25, _merged_serves),
    Item("test_lora_merge", "a bfloat16 weight with float32 adapters keeps its dtype", 0.25,
         _merge(16, 24, 4, 2.0, BF16, adapter_dtype=F32)),
    Item("test_lora_merge", "edge case: rank 1, alpha not a multiple of r; float32 unmerge", 0.25,
         lambda remote, gen: (_merge(6, 9, 1, 3, F64)(remote, gen), _unmerge_float32(remote, gen))),
    Item("test_extend_embedding", "init='mean'", 0.5, _extend(20, 8, 3, F32, "mean")),
    Item("test_extend_embedding", "a mapping to old ids (duplicates count)", 0.5, _extend(30, 6, 5, F64, "mapped")),
    Item("test_extend_embedding", "the old rows are kept bitwise", 0.25, _extend(25, 16, 2, F32, "bitwise")),
    Item("test_extend_embedding", "edge case: an empty list is the mean of all rows", 0.25,
         _extend(15, 4, 4, F64, "empty")),
    Item("test_extend_embedding", "edge case: one source id copies its row exactly", 0.25,
         _extend(12, 5, 3, F32, "single")),
    Item("test_extend_embedding", "edge case: bfloat16 weights keep their dtype", 0.25,
         _extend(10, 8, 2, BF16, "mapped")),
    Item("test_replay_epoch", "exact local and original rows in every batch", 0.75, _replay_counts),
    Item("test_replay_epoch", "every local row once per epoch", 0.5, _replay_local),
    Item("test_replay_epoch", "no original row twice while the pool lasts", 0.5, _replay_original),
    Item("test_replay_epoch", "shuffled, and repeatable from the seed", 0.5, _replay_random),
    Item("test_replay_epoch", "edge case: a remainder of local rows is dropped", 0.25, _replay_remainder),
    Item("test_replay_epoch", "edge case: a small original pool is reshuffled", 0.25, _replay_small_pool),
    Item("test_replay_epoch", "edge case: fraction 0 (no original rows)", 0.25, _replay_none),
    Item("test_gates_with_new_experts", "sigmoid (V3) over old and new experts", 0.75,
         _gates(9, 16, 6, 2, 3, "sigmoid")),
    Item("test_gates_with_new_experts", "softmax (V2) over old and new experts", 0.5,
         _gates(9, 16, 6, 4, 2, "softmax")),
    Item("test_gates_with_new_experts", "the bias selects but does not weigh", 0.5,
         _gates(12, 8, 8, 4, 4, "sigmoid", biased=True)),
    Item("test_gates_with_new_experts", "float64 hidden states: float32 gates", 0.5,
         _gates(5, 12, 4, 4, 2, "sigmoid", dtype=F64)),
    Item("test_gates_with_new_experts", "edge case: no new experts (E_new = 0)", 0.25,
         lambda remote, gen: (_gates(6, 8, 8, 0, 2, "sigmoid")(remote, gen),
                              _gates(6, 8, 8, 0, 2, "softmax")(remote, gen))),
    Item("test_gates_with_new_experts", "edge case: k = 1", 0.25,
         lambda remote, gen: (_gates(7, 8, 4, 2, 1, "sigmoid")(remote, gen),
                              _gates(7, 8, 4, 2, 1, "softmax")(remote, gen))),
    Item("test_gates_with_new_experts", "edge case: a single token", 0.25, _gates(1, 8, 5, 3, 2, "softmax")),
]
