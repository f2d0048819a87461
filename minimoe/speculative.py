"""Self-speculative decoding with the MTP modules (DeepSeek-V3 §2.2 and §5.4.3).

A trained MTP module already predicts the token after next, so it can draft it: each round the modules draft
``n ≤ D`` tokens, the main model reads the newest token and the drafts in ONE forward, and keeps the drafts it
agrees with (Leviathan et al. 2023; Chen et al. 2023):

    greedy (temperature 0): keep draft d_j while d_j = argmax p_{j−1}; the first disagreement is replaced by the
        main model's argmax, so the output is exactly plain greedy decoding, whatever the drafts;
    sampling: keep d_j ~ q_j with probability min(1, p(d_j) / q(d_j)); on the first rejection draw from
        norm(max(0, p − q)); if every draft is kept draw one more token from p. Each token is then distributed
        exactly as p given its prefix (the theorem of both papers), so the output has plain sampling's distribution.

Either way a round commits between 1 and n + 1 tokens for one forward of the main model. In a batch every row
advances by the smallest count of its rows (a row that accepted more keeps only drafts it accepted), so the batch
stays rectangular; this is still exact, since where a row stops depends only on verdicts before that position.
The MTP modules re-read the whole committed sequence each round (they are one block each; giving them a cache
is an exercise of chapter 10); the main model uses its cache unless ``use_cache=False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from minimoe.attention.masking import causal_mask
from minimoe.sampling import check_finite_logits, check_sampling, checked_prompts, left_pad, sample_next, \
    sampling_probs

__all__ = ["SpeculativeStats", "accept_drafts", "speculative_generate"]


@dataclass
class SpeculativeStats:
    """What speculative decoding did: ``forward_passes`` of the main model (the prefill included), ``positions``
    advanced (new tokens per row, the same for every row of the batch), and per draft depth k = 1 … D how many
    drafts the main model examined (``proposed[k-1]``: all earlier drafts of the round accepted) and accepted.

    ``acceptance_rate[k-1]`` = accepted / proposed at depth k (V3 §5.4.3 reports 85–90 % for k = 1, "the second
    token"); ``tokens_per_forward`` = positions / forward_passes (1.0 for plain decoding); ``rounds`` the tokens
    each verifying forward committed (1 … n + 1).
    """

    forward_passes: int = 0
    positions: int = 0
    proposed: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> list[float]:
        return [a / p if p else float("nan") for a, p in zip(self.accepted, self.proposed)]

    @property
    def tokens_per_forward(self) -> float:
        return self.positions / self.forward_passes if self.forward_passes else float("nan")


def accept_drafts(drafts: torch.Tensor, target_logits: torch.Tensor, draft_probs: torch.Tensor | None,
                  temperature: float, top_k: int | None = None, top_p: float | None = None,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The verifier's verdict on each draft and the token that replaces each one if it is the first rejected.

    ``target_logits[:, j]`` is the main model's prediction for the position of draft j (and, at j = n, for the
    token after the last draft); ``draft_probs[:, j]`` the distribution q the draft was drawn from (unused when
    greedy). Returns ``accepted`` (B, n) bool, each draft judged on its own, and ``fallback`` (B, n + 1): at j < n
    the token to emit if draft j is the first rejected (argmax p, or a draw from norm(max(0, p − q))), at n the
    token after n accepted drafts (argmax p or a draw from p).

    Shapes: drafts (B, n) long, target_logits (B, n + 1, V), draft_probs (B, n, V) or None
    -> accepted (B, n) bool, fallback (B, n + 1) long.
    """
    n = drafts.shape[1]
    if target_logits.shape[:2] != (drafts.shape[0], n + 1):
        raise ValueError(f"target_logits must have shape (B, n + 1, V) = ({drafts.shape[0]}, {n + 1}, V), "
                         f"got {tuple(target_logits.shape)}")
    if temperature == 0:
        best = target_logits.argmax(dim=-1)  # (B, n + 1)
        return drafts == best[:, :n], best
    p = sampling_probs(target_logits, temperature, top_k, top_p)  # (B, n + 1, V)
    q = draft_probs  # (B, n, V)
    p_d = p[:, :n].gather(-1, drafts[..., None]).squeeze(-1)  # (B, n): p(d_j)
    q_d = q.gather(-1, drafts[..., None]).squeeze(-1)  # (B, n): q(d_j) > 0, d_j was drawn from q
    u = torch.rand(p_d.shape, generator=generator, device=p_d.device)
    accepted = u * q_d < p_d  # u < min(1, p/q)
    residual = (p[:, :n] - q).clamp(min=0)  # (B, n, V): max(0, p − q)
    mass = residual.sum(-1, keepdim=True)
    residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), p[:, :n])  # p = q: never rejected anyway
    choices = torch.cat([residual, p[:, n:]], dim=1)  # (B, n + 1, V)
    fallback = torch.multinomial(choices.flatten(0, 1), 1, generator=generator).view(drafts.shape[0], n + 1)
    return accepted, fallback


@torch.no_grad()
def speculative_generate(model: nn.Module, prompts: list[list[int]] | list[int], max_new_tokens: int, *,
                         temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                         seed: int | None = None, eos_token_id: int | None = None, pad_token_id: int = 0,
                         use_cache: bool = True, return_stats: bool = False
                         ) -> list[list[int]] | tuple[list[list[int]], SpeculativeStats]:
    """``minimoe.generate(..., speculative="mtp")``: the same completions (greedy) or the same distribution
    (sampling) as plain decoding, in fewer forward passes of the main model; see the module docstring.

    Shapes: prompts left-padded to (B, P); each round feeds (B, 1 + n) with the cache, or everything without it.
    """
    prompts = checked_prompts(prompts, max_new_tokens, model.cfg.max_position_embeddings)
    check_sampling(temperature, top_k, top_p)
    D = len(getattr(model, "mtp", ()))
    if D == 0:
        raise ValueError("speculative='mtp' needs MTP modules to draft with: build the model with "
                         "num_nextn_predict_layers >= 1")
    B = len(prompts)
    stats = SpeculativeStats(proposed=[0] * D, accepted=[0] * D)
    completions: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens == 0:
        return (completions, stats) if return_stats else completions

    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    seq, pmask, pos = left_pad(prompts, pad_token_id, device)  # (B, L) each: the committed tokens
    done = torch.zeros(B, dtype=torch.bool, device=device)

    def commit(new: torch.Tensor) -> None:  # (B, c): append to every live row, stopping a row at EOS
        nonlocal done
        for j in range(new.shape[1]):
            for row in (~done).nonzero().flatten().tolist():
                completions[row].append(int(new[row, j]))
            if eos_token_id is not None:
                done = done | (new[:, j] == eos_token_id)

    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache() if use_cache else None
        out = model(seq, position_ids=pos, cache=cache, padding_mask=pmask)  # the prefill
        stats.forward_passes += 1
        check_finite_logits(out.logits[:, -1], 0)
        first = sample_next(out.logits[:, -1], temperature, top_k, top_p, generator)[:, None]  # (B, 1)
        h0 = out.hidden  # (B, L, d): h^0 of every committed position but the newest
        seq, pos, pmask = _extend(seq, pos, pmask, first)
        commit(first)
        stats.positions += 1
        while stats.positions < max_new_tokens and not bool(done.all()):
            n = min(D, max_new_tokens - stats.positions - 1)  # drafts this round
            drafts, draft_probs = _draft(model, h0, seq, pos, pmask, n, temperature, top_k, top_p, generator)
            ext = torch.cat([seq, drafts], dim=1)  # (B, L + n)
            ext_pos = torch.cat([pos, pos[:, -1:] + torch.arange(1, n + 1, device=device)], dim=1)
            ext_mask = torch.cat([pmask, pmask.new_ones(B, n)], dim=1)
            L = seq.shape[1]
            if use_cache:  # the newest token and the drafts, in one forward
                out = model(ext[:, L - 1:], position_ids=ext_pos[:, L - 1:], cache=cache, padding_mask=ext_mask)
                verified, hidden = out.logits, out.hidden  # (B, n + 1, V), (B, n + 1, d)
            else:
                out = model(ext, position_ids=ext_pos, padding_mask=ext_mask)
                verified, hidden = out.logits[:, L - 1:], out.hidden[:, L - 1:]
            stats.forward_passes += 1
            check_finite_logits(verified, stats.positions)
            accepted, fallback = accept_drafts(drafts, verified, draft_probs, temperature, top_k, top_p, generator)
            run = accepted.long().cumprod(dim=1)  # (B, n): 1 while every draft so far is accepted
            n_ok = run.sum(dim=1)  # (B,) drafts accepted per row
            live = ~done
            for k in range(n):  # draft k + 1 was examined where drafts 1 … k were all accepted
                examined = live & (n_ok >= k)
                stats.proposed[k] += int(examined.sum())
                stats.accepted[k] += int((examined & accepted[:, k]).sum())
            m = int(n_ok[live].min())  # every row keeps m drafts and one more token
            last = fallback[:, m]  # (B,)
            if m < n:  # rows that also accepted draft m + 1 keep it: it is an accepted draft
                last = torch.where(n_ok > m, drafts[:, m], last)
            new = torch.cat([drafts[:, :m], last[:, None]], dim=1)  # (B, m + 1)
            h0 = torch.cat([h0, hidden[:, :m + 1]], dim=1)  # the verified positions are now committed
            if cache is not None:
                for layer_cache in cache:
                    layer_cache.truncate(L + m)  # drop the rejected drafts
            seq, pos, pmask = _extend(seq, pos, pmask, new)
            commit(new)
            stats.positions += m + 1
            stats.rounds.append(m + 1)
    finally:
        model.train(was_training)
    return (completions, stats) if return_stats else completions


def _draft(model: nn.Module, h0: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor, pmask: torch.Tensor, n: int,
           temperature: float, top_k: int | None, top_p: float | None, generator: torch.Generator | None
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """n drafts from MTP modules 1 … n at the last position: module k reads h^{k−1} and the token k ahead, the
    newest committed token for k = 1 and draft k − 1 after. Shapes: h0 (B, L − 1, d), seq (B, L)
    -> drafts (B, n), their distributions (B, n, V) (None when greedy)."""
    B, L = seq.shape
    if n == 0:
        return seq.new_zeros(B, 0), None if temperature == 0 else h0.new_zeros(B, 0, model.cfg.vocab_size)
    cos_sin = model.rope.cos_sin(pos[:, :-1])  # positions of h0
    mask = causal_mask(B, L - 1, 0, pmask[:, :-1], seq.device)
    ext, h, probs = seq, h0, []
    for k in range(1, n + 1):
        h, logits, _ = model.mtp_step(k, h, ext, cos_sin, mask)  # (B, L - 1, d), (B, L - 1, V)
        if temperature == 0:
            draft = logits[:, -1].argmax(dim=-1)  # (B,)
        else:
            q = sampling_probs(logits[:, -1], temperature, top_k, top_p)  # (B, V)
            draft = torch.multinomial(q, 1, generator=generator).squeeze(-1)
            probs.append(q)
        ext = torch.cat([ext, draft[:, None]], dim=1)
    return ext[:, L:], (torch.stack(probs, dim=1) if probs else None)


def _extend(seq: torch.Tensor, pos: torch.Tensor, pmask: torch.Tensor, new: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    c = new.shape[1]
    steps = torch.arange(1, c + 1, device=seq.device)
    return (torch.cat([seq, new], dim=1), torch.cat([pos, pos[:, -1:] + steps], dim=1),
            torch.cat([pmask, pmask.new_ones(seq.shape[0], c)], dim=1))
