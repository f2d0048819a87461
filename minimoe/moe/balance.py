"""Load balancing for DeepSeekMoE: auxiliary losses, the auxiliary-loss-free bias, and load statistics.

DeepSeek-V2 §2.2.3 adds three auxiliary losses to the language-model loss, each a sum of f_i · P_i: f_i is how
often something was chosen (a count, no gradient) and P_i how strongly the router wanted it (a mean of scores, with
gradient). Minimising Σ f_i P_i pushes probability away from over-used experts (Eq. (23)–(25)), devices
(Eq. (26)–(28)) and communication targets (Eq. (29)–(31)). V2 defines f_i and P_i over "the number of tokens in a
sequence": its expert-level loss is already sequence-wise. DeepSeek-V3 §2.1.2 replaces the losses by a per-expert
bias that steers selection only (Eq. (16)) and keeps a tiny sequence-wise loss as a safety net (Eq. (17)–(20));
V3 §4.5.3 studies a *batch-wise* auxiliary loss as an alternative.

``expert_balance_loss`` computes Eq. (23)–(25) over all the tokens it is given: pass one sequence for V2's loss, a
whole batch for the batch-wise variant. ``sequence_balance_loss`` splits the tokens into sequences itself.

Every function takes the routing of a batch as plain tensors, so it can be plotted and unit-tested on its own:
``scores`` are the affinities s_{i,t} of every token for every expert, ``topk_idx`` the experts each token selected.
Experts are placed on devices in contiguous blocks: device d holds experts d·E/D … (d+1)·E/D − 1.
"""

from __future__ import annotations

import torch


def _check_routing(scores: torch.Tensor | None, topk_idx: torch.Tensor, n_experts: int, alpha: float) -> None:
    """The boundary checks of every public function here: types and shapes only, never the values (that would be a
    host sync on every forward; an index out of range fails in ``bincount``/``scatter`` instead)."""
    if not (isinstance(n_experts, int) and n_experts > 0):
        raise ValueError(f"n_experts ({n_experts!r}) must be a positive integer")
    if alpha < 0:
        raise ValueError(f"alpha ({alpha}) must be non-negative")
    if topk_idx.dim() < 2 or topk_idx.shape[-1] == 0:
        raise ValueError(f"topk_idx must be (N, K) with K >= 1, got shape {tuple(topk_idx.shape)}")
    if topk_idx.dtype.is_floating_point:
        raise ValueError(f"topk_idx must hold integer expert indices, got dtype {topk_idx.dtype}")
    if topk_idx.shape[-1] > n_experts:
        raise ValueError(f"topk_idx selects {topk_idx.shape[-1]} experts per token, more than n_experts ({n_experts})")
    if scores is None:
        return
    if scores.shape[-1] != n_experts:
        raise ValueError(f"scores last dim ({scores.shape[-1]}) must equal n_experts ({n_experts})")
    if scores.shape[:-1] != topk_idx.shape[:-1]:
        raise ValueError(f"scores {tuple(scores.shape)} and topk_idx {tuple(topk_idx.shape)} must cover the same "
                         "tokens (equal leading dims)")
    if scores[..., 0].numel() == 0:
        raise ValueError("the routing holds no tokens")


def _check_devices(n_experts: int, n_devices: int) -> None:
    if not (isinstance(n_devices, int) and n_devices > 0):
        raise ValueError(f"n_devices ({n_devices!r}) must be a positive integer")
    if n_experts % n_devices != 0:
        raise ValueError(f"n_experts ({n_experts}) must be divisible by n_devices ({n_devices})")


def _selection_counts(topk_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """How many tokens selected each expert: Σ_t 1(token t selects i). Shapes: (N, K) -> (E,) float."""
    return torch.bincount(topk_idx.reshape(-1), minlength=n_experts).float()  # (E,)


def expert_balance_loss(scores: torch.Tensor, topk_idx: torch.Tensor, n_experts: int,
                        alpha: float) -> torch.Tensor:
    """Expert-level balance loss over all the N tokens given (DeepSeek-V2 §2.2.3, Eq. (23)–(25)).

    L_ExpBal = α₁ Σ_i f_i P_i,  f_i = N_r / (K_r T) · Σ_t 1(token t selects expert i),  P_i = (1/T) Σ_t s_{i,t}.
    The paper's T is the number of tokens in a sequence: given one sequence this is V2's loss exactly; given a
    whole batch (T = N) it is the batch-wise variant of DeepSeek-V3 §4.5.3. ``sequence_balance_loss`` averages the
    per-sequence loss over a batch.

    With balanced selection every f_i = 1, so for softmax scores (Σ_i P_i = 1) the loss equals α₁. The gradient
    reaches the router through P only; f is a count.

    Shapes: scores (N, E) (or (..., E), flattened), topk_idx (N, K) long -> scalar.
    """
    _check_routing(scores, topk_idx, n_experts, alpha)
    scores = scores.reshape(-1, n_experts)  # (N, E)
    n_tokens, k = scores.shape[0], topk_idx.shape[-1]
    f = n_experts / (k * n_tokens) * _selection_counts(topk_idx, n_experts)  # Eq. (24), (E,)
    p = scores.mean(dim=0)  # Eq. (25), (E,)
    return alpha * (f.to(p.dtype) * p).sum()  # Eq. (23)


def device_balance_loss(scores: torch.Tensor, topk_idx: torch.Tensor, n_experts: int, n_devices: int,
                        alpha: float) -> torch.Tensor:
    """Device-level balance loss (DeepSeek-V2 §2.2.3, Eq. (26)–(28)).

    L_DevBal = α₂ Σ_{d=1}^{D} f'_d P'_d,  f'_d = (1/|E_d|) Σ_{j∈E_d} f_j,  P'_d = Σ_{j∈E_d} P_j,
    with f_j, P_j from Eq. (24)–(25) and E_d the experts on device d.

    Shapes: scores (N, E), topk_idx (N, K) long -> scalar.
    """
    _check_routing(scores, topk_idx, n_experts, alpha)
    _check_devices(n_experts, n_devices)
    scores = scores.reshape(-1, n_experts)  # (N, E)
    n_tokens, k = scores.shape[0], topk_idx.shape[-1]
    f = n_experts / (k * n_tokens) * _selection_counts(topk_idx, n_experts)  # Eq. (24), (E,)
    p = scores.mean(dim=0)  # Eq. (25), (E,)
    f_dev = f.view(n_devices, -1).mean(dim=-1)  # Eq. (27), (n_devices,)
    p_dev = p.view(n_devices, -1).sum(dim=-1)  # Eq. (28), (n_devices,)
    return alpha * (f_dev.to(p_dev.dtype) * p_dev).sum()  # Eq. (26)


def communication_balance_loss(scores: torch.Tensor, topk_idx: torch.Tensor, n_experts: int, n_devices: int,
                               m_devices: int, alpha: float) -> torch.Tensor:
    """Communication balance loss (DeepSeek-V2 §2.2.3, Eq. (29)–(31)).

    L_CommBal = α₃ Σ_{d=1}^{D} f''_d P''_d,  f''_d = D / (M T) · Σ_t 1(token t is sent to device d),
    P''_d = Σ_{j∈E_d} P_j. A token is sent to a device when at least one of its selected experts lives there; with
    device-limited routing it reaches at most M devices, so balanced traffic gives every f''_d = 1.

    Shapes: scores (N, E), topk_idx (N, K) long -> scalar.
    """
    _check_routing(scores, topk_idx, n_experts, alpha)
    _check_devices(n_experts, n_devices)
    if not (isinstance(m_devices, int) and 0 < m_devices <= n_devices):
        raise ValueError(f"m_devices ({m_devices!r}) must be an integer between 1 and n_devices ({n_devices})")
    scores = scores.reshape(-1, n_experts)  # (N, E)
    idx = topk_idx.reshape(scores.shape[0], -1)  # (N, K)
    n_tokens = scores.shape[0]
    device = idx // (n_experts // n_devices)  # (N, K): device of each selected expert
    sent = torch.zeros(n_tokens, n_devices, dtype=torch.bool, device=idx.device)
    sent.scatter_(1, device, True)  # (N, n_devices): token t sends to device d
    f_comm = n_devices / (m_devices * n_tokens) * sent.sum(dim=0).float()  # Eq. (30), (n_devices,)
    p_comm = scores.mean(dim=0).view(n_devices, -1).sum(dim=-1)  # Eq. (31), (n_devices,)
    return alpha * (f_comm.to(p_comm.dtype) * p_comm).sum()  # Eq. (29)


def sequence_balance_loss(scores: torch.Tensor, topk_idx: torch.Tensor, n_experts: int, alpha: float,
                          seq_len: int | None = None) -> torch.Tensor:
    """Complementary sequence-wise balance loss (DeepSeek-V3 §2.1.2, Eq. (17)–(20)), averaged over sequences.

    For each sequence of T tokens: L_Bal = α Σ_i f_i P_i,  f_i = N_r / (K_r T) · Σ_t 1(s_{i,t} ∈ TopK),
    s'_{i,t} = s_{i,t} / Σ_j s_{j,t},  P_i = (1/T) Σ_t s'_{i,t}. The normalisation makes sigmoid affinities comparable
    across tokens (a softmax row already sums to 1); for softmax scores this is DeepSeek-V2's expert-level loss
    (Eq. (23)–(25)), per sequence. It balances every sequence, where ``expert_balance_loss`` on a whole batch
    balances only the batch.

    Which experts count: f_i counts the experts in ``topk_idx``, whatever chose them. V2's Eq. (24) counts the
    experts each token selects; V3's Eq. (18) counts Topk({s_{j,t}}, K_r), the top-K of the *unbiased* affinities
    over all experts, which is not the selection when a bias or group-limited routing steers it. To follow Eq. (18)
    pass ``scores.topk(K, dim=-1).indices`` (``routing_balance_loss`` does so for ``noaux_tc`` models).

    Shapes: scores (B·T, E) with ``seq_len=T``, or (B, T, E) with ``seq_len`` None or T;
    topk_idx (B·T, K) or (B, T, K) long -> scalar.
    """
    _check_routing(scores, topk_idx, n_experts, alpha)
    if seq_len is None:
        if scores.dim() != 3:
            raise ValueError(f"seq_len is needed when scores are flat {tuple(scores.shape)}; pass seq_len=T "
                             "or scores shaped (B, T, E)")
        seq_len = scores.shape[1]
    if not (isinstance(seq_len, int) and seq_len > 0):
        raise ValueError(f"seq_len ({seq_len!r}) must be a positive integer")
    n_tokens = scores[..., 0].numel()
    if n_tokens % seq_len != 0:
        raise ValueError(f"the number of tokens ({n_tokens}) must be divisible by seq_len ({seq_len})")
    k = topk_idx.shape[-1]
    s = scores.reshape(-1, seq_len, n_experts)  # (B, T, E)
    idx = topk_idx.reshape(-1, seq_len * k)  # (B, T·K)
    counts = torch.zeros(s.shape[0], n_experts, dtype=s.dtype, device=s.device)
    counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=s.dtype))  # (B, E): Σ_t 1(s_{i,t} ∈ TopK)
    f = n_experts / (k * seq_len) * counts  # Eq. (18), (B, E)
    s_norm = s / s.sum(dim=-1, keepdim=True)  # Eq. (19), (B, T, E)
    p = s_norm.mean(dim=1)  # Eq. (20), (B, E)
    return alpha * (f * p).sum(dim=-1).mean()  # Eq. (17), mean over the B sequences


def expert_load(topk_idx: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Share of the routed (token, expert) assignments each expert received; sums to 1, uniform = 1/E.

    Shapes: topk_idx (N, K) (or (..., K)) long -> load (E,) float32.
    """
    _check_routing(None, topk_idx, n_experts, 0.0)
    counts = _selection_counts(topk_idx, n_experts)  # (E,)
    return counts / counts.sum().clamp_min(1.0)


def max_violation(load: torch.Tensor) -> torch.Tensor:
    """MaxVio = max_i load_i / mean_i load_i − 1: 0 for perfect balance.

    The measure comes from Wang et al. 2024 (auxiliary-loss-free load balancing, arXiv 2408.15664), the strategy
    DeepSeek-V3 §2.1.2 adopts. When every token picks K *distinct* experts out of E, one expert receives at most one
    K-th of the assignments, so MaxVio ≤ E/K − 1, reached when one expert is in every token's top-K (E − 1 only for
    K = 1). ``load`` may be counts or shares: the ratio does not care.

    Shapes: load (E,) or (..., E) -> () or (...).
    """
    if load.dim() == 0 or load.shape[-1] == 0:
        raise ValueError(f"load must be (..., E) with E >= 1, got shape {tuple(load.shape)}")
    if (load < 0).any():
        raise ValueError("load must be non-negative")
    mean = load.float().mean(dim=-1)
    if (mean <= 0).any():
        raise ValueError("load must be positive somewhere (the mean load is 0)")
    return load.float().max(dim=-1).values / mean - 1.0


@torch.no_grad()
def update_selection_bias(bias: torch.Tensor, load: torch.Tensor, gamma: float) -> torch.Tensor:
    """One auxiliary-loss-free balancing step (DeepSeek-V3 §2.1.2, Eq. (16) and the rule below it).

    b_i ← b_i − γ if expert i is overloaded (load above the mean), b_i + γ if underloaded, unchanged if exactly at
    the mean: ``b + γ · sign(mean(load) − load)``. The bias only enters selection (``scores + bias``), never the gate
    values, so it gets no gradient. Returns a new tensor in ``bias``'s dtype; ``bias`` itself is not modified.

    Shapes: bias (E,), load (E,) (``expert_load``: shares or counts) -> (E,).
    """
    if gamma < 0:
        raise ValueError(f"gamma ({gamma}) must be non-negative")
    if bias.dim() != 1 or load.shape != bias.shape:
        raise ValueError(f"bias {tuple(bias.shape)} and load {tuple(load.shape)} must both be (E,)")
    load = load.float()
    error = load.mean() - load  # (E,): > 0 underloaded, < 0 overloaded
    return (bias.float() + gamma * torch.sign(error)).to(bias.dtype)


def routing_balance_loss(routing: list, cfg) -> torch.Tensor:
    """Σ over MoE layers of the balance loss the model config asks for (``ModelOutput.aux_loss``).

    ``cfg.aux_loss_alpha`` α (0 = none); ``cfg.seq_aux``: per sequence (``sequence_balance_loss``, DeepSeek-V3
    Eq. (17)–(20); V2 Eq. (23)–(25) for softmax scores) or over the whole batch with the scores normalised per
    token (``expert_balance_loss``, the batch-wise variant of V3 §4.5.3). When the routing scheme selects with a
    bias (``noaux_tc``) f_i counts the top-K of the unbiased affinities over all experts (V3 Eq. (18)), not the
    biased, group-limited selection; otherwise the selected experts (V2 Eq. (24)).

    Shapes: routing: RoutingRecords with scores (B, T, E), experts (B, T, K) -> scalar (with graph).
    """
    alpha = cfg.aux_loss_alpha
    if not alpha or not routing:
        return torch.zeros(())
    n_experts = cfg.n_routed_experts
    total = []
    for record in routing:
        scores, indices = record.scores, record.experts
        if cfg.routing_scheme.selection_bias:
            indices = scores.topk(indices.shape[-1], dim=-1).indices  # (B, T, K): Eq. (18), Topk({s_j,t}, K_r)
        if cfg.seq_aux:
            total.append(sequence_balance_loss(scores, indices, n_experts, alpha))
        else:
            s_norm = scores / scores.sum(dim=-1, keepdim=True)  # (B, T, E)
            total.append(expert_balance_loss(s_norm, indices, n_experts, alpha))
    return torch.stack(total).sum()
