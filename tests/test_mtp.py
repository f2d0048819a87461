"""minimoe.mtp: multi-token prediction (DeepSeek-V3 §2.2, Eqs. (21)–(25)) and, with it, minimoe.speculative's
self-speculative decoding (greedy output identical to plain decoding; the sampling distribution unchanged)."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from minimoe import ModelConfig, Transformer, generate
from minimoe.moe import routing_balance_loss
from minimoe.mtp import IGNORE_INDEX, mtp_combine, mtp_cross_entropies, mtp_loss
from minimoe.norm import RMSNorm
from minimoe.speculative import accept_drafts


def tiny(name="tiny-v3", **kw):
    return ModelConfig.from_preset(name, **{"num_nextn_predict_layers": 1, **kw})


# ----------------------------------------------------------------------------- the pure functions
def test_mtp_combine_is_eq_21():
    torch.manual_seed(0)
    h, e = torch.randn(2, 5, 8, dtype=torch.float64), torch.randn(2, 5, 8, dtype=torch.float64)
    norm_h, norm_e = RMSNorm(8).double(), RMSNorm(8).double()
    with torch.no_grad():
        norm_h.weight.uniform_(0.5, 1.5)
        norm_e.weight.uniform_(0.5, 1.5)
    M = torch.randn(8, 16, dtype=torch.float64)
    out = mtp_combine(h, e, norm_h, norm_e, lambda x: x @ M.T)

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w
    expected = torch.cat([rms(h, norm_h.weight), rms(e, norm_e.weight)], -1) @ M.T
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("use_targets", [False, True])
def test_mtp_loss_against_a_hand_written_loop(use_targets):
    torch.manual_seed(1)
    B, T, V, D, lam = 3, 9, 11, 3, 0.3
    tokens = torch.randint(0, V, (B, T))
    logits = [torch.randn(B, T - k, V, dtype=torch.float64, requires_grad=True) for k in range(1, D + 1)]
    targets = None
    if use_targets:  # next-token targets, the one past the end included, some ignored
        targets = torch.cat([tokens[:, 1:], torch.randint(0, V, (B, 1))], dim=1)
        targets[0, 2] = targets[1, -1] = IGNORE_INDEX
    ce = []
    for k in range(1, D + 1):  # Eq. (24): position i of module k predicts token i + k + 1
        total, count = 0.0, 0
        for b in range(B):
            for i in range(T - k):
                target = tokens[b, i + k + 1] if targets is None and i + k + 1 < T else None
                if targets is not None:
                    target = targets[b, i + k]
                if target is None or target == IGNORE_INDEX:
                    continue
                total = total - torch.log_softmax(logits[k - 1][b, i].float(), -1)[target]
                count += 1
        ce.append(total / count)
    expected = lam / D * sum(ce)  # Eq. (25)
    got = mtp_loss(logits, tokens, lam, targets)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(mtp_cross_entropies(logits, tokens, targets), torch.stack(ce))
    got.backward()
    assert all(lg.grad is not None for lg in logits)


def test_mtp_loss_errors_name_the_shape():
    tokens = torch.zeros(2, 6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(B, T - k, V\) for k = 1 … D with \(B, T\) = \(2, 6\), got \[\(2, 5\), \(2, 5\)\]"):
        mtp_loss([torch.zeros(2, 5, 7), torch.zeros(2, 5, 7)], tokens, 0.1)
    with pytest.raises(ValueError, match=r"D >= 1 tensors .* got \[\]"):
        mtp_loss([], tokens, 0.1)
    with pytest.raises(ValueError, match="targets must have the shape of tokens"):
        mtp_loss([torch.zeros(2, 5, 7)], tokens, 0.1, targets=tokens[:, :3])


# ----------------------------------------------------------------------------- the model
@pytest.mark.parametrize("name", ["tiny-dense", "tiny-v3"])
def test_forward_mtp_logits_loss_and_gradients(name):
    torch.manual_seed(2)
    cfg = tiny(name, num_nextn_predict_layers=2, mtp_loss_weight=0.25)
    model = Transformer(cfg)
    tokens = torch.randint(0, cfg.vocab_size, (2, 10))
    out = model(tokens)
    assert [tuple(lg.shape) for lg in out.mtp_logits] == [(2, 9, cfg.vocab_size), (2, 8, cfg.vocab_size)]
    torch.testing.assert_close(out.mtp_loss, mtp_loss(out.mtp_logits, tokens, 0.25))
    balanced = Transformer(cfg.replace(aux_loss_alpha=0.1))
    balanced.load_state_dict(model.state_dict())
    both = balanced(tokens)  # the balance and MTP losses come apart; aux_loss is their sum
    torch.testing.assert_close(both.mtp_loss, out.mtp_loss)
    torch.testing.assert_close(both.balance_loss, routing_balance_loss(both.routing, balanced.cfg))
    assert (both.balance_loss.item() > 0) == (name == "tiny-v3") and out.balance_loss.item() == 0.0
    torch.testing.assert_close(both.aux_loss, both.balance_loss + both.mtp_loss)
    balance = Transformer(cfg.replace(num_nextn_predict_layers=0))
    n_main = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
    n_mtp = 2 if cfg.is_moe_layer(cfg.num_hidden_layers - 1) else 0  # an MTP block has the last layer's type
    assert [r.layer for r in out.routing][n_main:] == [2, 3][:n_mtp] and len(out.routing) == n_main + n_mtp
    out.aux_loss.backward()
    assert model.mtp[1].proj.weight.grad.abs().sum() > 0 and model.embed.weight.grad.abs().sum() > 0
    model.update_routing_bias(out.routing)  # MTP blocks' records resolve
    # the main model's logits do not depend on the MTP modules
    balance.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("mtp.")})
    torch.testing.assert_close(balance(tokens).logits, model(tokens).logits)


def test_no_mtp_when_d_is_zero_and_with_a_cache():
    cfg = tiny(num_nextn_predict_layers=0)
    model = Transformer(cfg)
    assert not any(k.startswith("mtp") for k in model.state_dict())
    out = model(torch.randint(0, 128, (1, 5)))
    assert out.mtp_logits == [] and float(out.mtp_loss) == 0.0
    model = Transformer(tiny())
    out = model(torch.randint(0, 128, (1, 5)), cache=model.new_cache())
    assert out.mtp_logits == []


def test_targets_change_the_mtp_targets():
    torch.manual_seed(3)
    model = Transformer(tiny())
    tokens = torch.randint(0, 128, (2, 8))
    targets = torch.full_like(tokens, IGNORE_INDEX)
    targets[:, 3] = 5
    out = model(tokens, targets=targets)
    expected = 0.3 * F.cross_entropy(out.mtp_logits[0][:, 2], torch.full((2,), 5))  # position 2 predicts 2 + 2
    torch.testing.assert_close(out.mtp_loss, expected)




def test_to_hf_exports_the_main_model_with_a_warning():
    pytest.importorskip("transformers")
    from minimoe import interop

    torch.manual_seed(4)
    model = Transformer(tiny()).eval()
    with pytest.warns(UserWarning, match="MTP"):
        hf = interop.to_hf(model)
    tokens = torch.randint(0, 128, (2, 6))
    torch.testing.assert_close(hf.eval()(tokens).logits, model(tokens).logits, atol=1e-5, rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert interop.from_hf(hf).cfg.num_nextn_predict_layers == 0


# ----------------------------------------------------------------------------- speculative decoding
def drafting_model(seed, noise, D=1, name="tiny-v3", vocab=32):
    """A random model whose MTP modules draft well when ``noise`` is small: M_k = [ε; I] makes module k see
    (nearly) the embedding of the token k ahead, so it can agree with the main model's next prediction."""
    torch.manual_seed(seed)
    model = Transformer(tiny(name, num_nextn_predict_layers=D, vocab_size=vocab)).double()
    with torch.no_grad():
        for module in model.mtp:
            d = module.proj.weight.shape[0]
            module.proj.weight.copy_(torch.cat([noise * torch.randn(d, d), torch.eye(d)], dim=1))
            for p in module.block.parameters():
                p.mul_(noise)
        for layer in model.layers:
            for p in layer.parameters():
                p.mul_(0.5)
    return model


PROMPTS = [[1, 2, 3, 4, 5, 6], [7, 8], [3], [9, 9, 9, 1]]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("noise,D", [(0.0, 1), (0.3, 1), (0.1, 2), (1.0, 2)])
def test_speculative_greedy_equals_plain_greedy(seed, noise, D):
    model = drafting_model(seed, noise, D)
    plain = generate(model, PROMPTS, 12)
    fast, stats = generate(model, PROMPTS, 12, speculative="mtp", return_stats=True)
    assert fast == plain
    assert generate(model, PROMPTS, 12, speculative="mtp", use_cache=False) == plain
    assert generate(model, [PROMPTS[1]], 12, speculative="mtp") == [plain[1]]  # a row alone, no padding
    assert stats.positions == 12 and stats.forward_passes <= 12
    if noise == 0.0:
        assert stats.acceptance_rate[0] > 0.5 and stats.tokens_per_forward > 1.1


def test_speculative_greedy_random_model_and_eos():
    torch.manual_seed(5)
    model = Transformer(tiny("tiny-dense", num_nextn_predict_layers=2, vocab_size=16))
    plain = generate(model, PROMPTS, 10, eos_token_id=3)
    assert generate(model, PROMPTS, 10, eos_token_id=3, speculative="mtp") == plain
    for n in (0, 1, 2):
        assert generate(model, PROMPTS, n, speculative="mtp") == generate(model, PROMPTS, n)


def test_speculative_needs_mtp_modules():
    model = Transformer(tiny(num_nextn_predict_layers=0))
    with pytest.raises(ValueError, match="num_nextn_predict_layers"):
        generate(model, [1, 2], 3, speculative="mtp")
    with pytest.raises(ValueError, match="speculative"):
        generate(model, [1, 2], 3, speculative="medusa")


def test_accept_drafts_rule_keeps_the_target_distribution():
    """One draft from q, verified against p: the emitted token is distributed as p (Chen et al. 2023,
    Theorem 1; Leviathan et al. 2023, Appendix A.1), counted over 200,000 draws; total variation below 0.01 (its noise is about 0.003)."""
    torch.manual_seed(6)
    V, N = 5, 200_000
    p_logits = torch.tensor([2.0, 0.5, 0.0, -1.0, 1.0])
    q = torch.tensor([0.05, 0.5, 0.2, 0.2, 0.05])
    g = torch.Generator().manual_seed(7)
    drafts = torch.multinomial(q.expand(N, V), 1, replacement=True, generator=g)  # (N, 1)
    accepted, fallback = accept_drafts(drafts, p_logits.expand(N, 2, V), q.expand(N, 1, V), 1.0, generator=g)
    emitted = torch.where(accepted[:, 0], drafts[:, 0], fallback[:, 0])
    freq = torch.bincount(emitted, minlength=V).double() / N
    assert 0.5 * (freq - p_logits.softmax(-1).double()).abs().sum() < 0.01
    assert abs(accepted.double().mean() - torch.minimum(q, p_logits.softmax(-1)).sum()) < 0.01


def test_speculative_sampling_matches_plain_sampling_by_counting():
    """Three new tokens after a fixed prompt on a vocabulary of 4 (the second drafted and verified, the third the
    verifier's bonus or correction): the 16 joint outcomes of tokens 2 and 3 counted over 6,000 runs of each
    sampler (seeded). Their total variation is 0.02 (noise about 0.02); below 0.06 passes. Accepting every draft
    instead (the MTP head's distribution, 66 % acceptance) gives 0.33."""
    model = drafting_model(10, 3.0, D=2, name="tiny-dense", vocab=4)
    with torch.no_grad():
        model.head.weight.mul_(20)  # peaked distributions: the draft's q differs clearly from p
    prompt = [[1, 2, 3]] * 6000
    plain = generate(model, prompt, 3, temperature=1.0, seed=0)
    fast, stats = generate(model, prompt, 3, temperature=1.0, seed=1, speculative="mtp", return_stats=True)

    def law(samples):
        counts = torch.zeros(16, dtype=torch.float64)
        for _, a, b in samples:
            counts[4 * a + b] += 1
        return counts / len(samples)
    assert 0.5 * (law(plain) - law(fast)).abs().sum() < 0.06
    assert 0.5 < stats.acceptance_rate[0] < 0.8


def test_speculative_sampling_with_top_k_is_seeded():
    model = drafting_model(9, 0.3, D=2, vocab=32)
    a = generate(model, PROMPTS, 8, temperature=0.8, top_k=5, seed=3, speculative="mtp")
    assert a == generate(model, PROMPTS, 8, temperature=0.8, top_k=5, seed=3, speculative="mtp")
    assert all(len(row) == 8 for row in a)


def test_speculative_absorbed_mla_and_plain_only_options():
    model = drafting_model(11, 0.2, D=1)
    plain = generate(model, PROMPTS, 6)
    model.set_attn_mode("absorbed")  # the MTP blocks switch too
    assert model.mtp[0].block.attn.mode == "absorbed"
    assert generate(model, PROMPTS, 6, speculative="mtp") == plain
    with pytest.raises(ValueError, match="speculative"):
        generate(model, PROMPTS, 6, use_cache=False)
