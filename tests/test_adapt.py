"""minimoe.adapt: LoRA against peft on the transformers export, vocabulary extension, new experts, replay."""

import pytest
import torch

from minimoe.adapt import (LoRALinear, add_experts, add_lora, expert_shares, extend_tokenizer, extend_vocabulary,
                           freeze_rows, lora_layers, merge_lora, n_trainable, replay_rows, unload_lora, unmerge_lora)
from minimoe.config import ModelConfig
from minimoe.model import Transformer
from minimoe.optim import make_optimizer, training_step
from minimoe.tasks.tokenizer import CharTokenizer

R, ALPHA = 4, 8.0


def small_model(seed: int = 0, **overrides) -> Transformer:
    """tiny-v3 (MLA with q compression, a dense layer, then DeepSeekMoE with a shared expert), random weights with
    a decisive router (no near-ties between experts)."""
    cfg = ModelConfig.from_preset("tiny-v3", vocab_size=50, **overrides)
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("router.weight"):
                p.normal_(std=0.5)
            elif p.dim() > 1:
                p.normal_(std=1.0 if name.startswith("embed") else 0.1)
    return model


def tokens(vocab: int = 50, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(seed))


# --- LoRA == peft -------------------------------------------------------------------------------------------

HF_ATTENTION = {"q_a_proj": "wq_a", "q_b_proj": "wq_b", "kv_a_proj_with_mqa": "wkv_a", "kv_b_proj": "wkv_b",
                "o_proj": "wo", "q_proj": "wq"}
HF_MLP = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}


def copy_peft_adapter(peft_model, ours: Transformer) -> None:
    """Write peft's LoRA matrices into our LoRALinear layers.

    nn.Linear targets map one to one. A routed-expert stack is one peft ParamWrapper per 3-D parameter: for expert
    e, A_e = A.reshape(E, r, k)[e] and B_e = B.reshape(d, r, E)[..., e] (peft's ``get_delta_weight``). The fused
    ``gate_up_proj`` (E, 2I, d) has one A_e for both halves: our w1 and w3 get the same A and B's two halves.
    """
    layers = lora_layers(ours)
    cfg = ours.cfg
    E, inter = cfg.n_routed_experts, cfg.moe_intermediate_size
    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if not hasattr(module, "lora_A") or "default" not in module.lora_A:
                continue
            A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
            parts = name.split(".")
            i = int(parts[parts.index("layers") + 1])
            if "self_attn" in parts:
                targets = {f"layers.{i}.attn.{HF_ATTENTION[parts[-1]]}": (A, B)}
            elif "shared_experts" in parts:
                targets = {f"layers.{i}.ffn.shared_experts.{HF_MLP[parts[-1]]}": (A, B)}
            else:  # a routed-expert ParamWrapper
                A_e = A.reshape(E, R, A.shape[-1])  # (E, r, k)
                B_e = B.reshape(B.shape[0], R, E)  # (d, r, E)
                targets = {}
                for e in range(E):
                    prefix = f"layers.{i}.ffn.experts.{e}"
                    if module.parameter_name == "gate_up_proj":
                        targets[f"{prefix}.w1"] = (A_e[e], B_e[:inter, :, e])
                        targets[f"{prefix}.w3"] = (A_e[e], B_e[inter:, :, e])
                    else:
                        targets[f"{prefix}.w2"] = (A_e[e], B_e[..., e])
            for key, (a, b) in targets.items():
                layers[key].lora_A.copy_(a)
                layers[key].lora_B.copy_(b)


def peft_pair(seed: int = 0):
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from minimoe.interop import to_hf

    ours = small_model(seed)
    hf = to_hf(ours).eval()
    attention = [f"model.layers.{i}.self_attn.{n}" for i in range(ours.cfg.num_hidden_layers)
                 for n in ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")]
    shared = [f"model.layers.{i}.mlp.shared_experts.{n}" for i in range(ours.cfg.num_hidden_layers)
              if ours.cfg.is_moe_layer(i) for n in HF_MLP]
    config = peft.LoraConfig(
        r=R, lora_alpha=ALPHA, init_lora_weights=False,  # False: B random too, so the update is not zero
        target_modules=attention + shared, target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    torch.manual_seed(seed + 100)
    peft_model = peft.get_peft_model(hf, config).eval()
    names = add_lora(ours, R, ALPHA)
    copy_peft_adapter(peft_model, ours)
    return ours, peft_model, names


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


@pytest.mark.equivalence
@pytest.mark.parametrize("mode", ["naive", "absorbed"])
def test_lora_equals_peft_on_the_transformers_export(mode):
    ours, peft_model, names = peft_pair()
    assert len(names) == 2 * 5 + 3 * (ours.cfg.n_routed_experts + 1)  # attention in both layers, MoE layer's experts
    x = tokens()
    with torch.no_grad():
        theirs = peft_model(x).logits
        ours.set_attn_mode(mode)
        close(ours(x).logits, theirs)
        with peft_model.disable_adapter():
            base = peft_model(x).logits
        assert (theirs - base).abs().max() > 1e-2 * base.abs().max()  # the update is not zero


@pytest.mark.equivalence
def test_lora_merge_and_unmerge_equal_peft():
    ours, peft_model, _ = peft_pair(seed=3)
    x = tokens(seed=4)
    originals = {name: layer.base.weight.clone() for name, layer in lora_layers(ours).items()}
    with torch.no_grad():
        active = peft_model(x).logits
        peft_model.merge_adapter()
        merge_lora(ours)
        assert all(layer.merged for layer in lora_layers(ours).values())
        close(ours(x).logits, peft_model(x).logits)
        close(ours(x).logits, active)
        # the merged weights themselves equal peft's merged weights, through the export
        from minimoe.interop import state_dict_to_hf
        merged_state = {k.replace(".base.", "."): v for k, v in ours.state_dict().items() if "lora_" not in k}
        hf_state = state_dict_to_hf(merged_state, ours.cfg)
        theirs = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                  for k, v in peft_model.state_dict().items() if "lora_" not in k}
        for key, tensor in hf_state.items():
            close(tensor, theirs[key])
        peft_model.unmerge_adapter()
        unmerge_lora(ours)
        close(ours(x).logits, peft_model(x).logits)
        close(ours(x).logits, active)
    for name, layer in lora_layers(ours).items():
        torch.testing.assert_close(layer.base.weight, originals[name], rtol=0, atol=1e-6)


def test_lora_starts_at_the_base_model_and_trains_only_its_matrices():
    model = small_model()
    x = tokens()
    before = model(x).logits
    add_lora(model, R, ALPHA)
    torch.testing.assert_close(model(x).logits, before, rtol=0, atol=0)  # B = 0
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith(("lora_A", "lora_B")) for name in trainable)
    with pytest.raises(ValueError, match="targets"):
        add_lora(small_model(), targets=[r"nothing\.here"])
    with pytest.raises(ValueError, match="r"):
        LoRALinear(torch.nn.Linear(4, 4), 0, 1.0)


def test_lora_absorbed_mode_reads_the_adapted_weight():
    model = small_model()
    add_lora(model, R, ALPHA)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.1)
    x = tokens()
    naive = model(x).logits
    with model.attention_mode("absorbed"):
        close(model(x).logits, naive)


def test_unload_lora_gives_back_a_plain_model():
    model = small_model()
    add_lora(model, R, ALPHA)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.1)
    x = tokens()
    adapted = model(x).logits
    unload_lora(model)
    assert not lora_layers(model)
    plain = Transformer(model.cfg).eval()
    plain.load_state_dict(model.state_dict(), strict=True)
    close(plain(x).logits, adapted)


# --- vocabulary extension ----------------------------------------------------------------------------------

def test_extend_tokenizer_keeps_every_old_id():
    old = CharTokenizer()
    new = extend_tokenizer(old, "三百加a三")
    assert new.vocab_size == old.vocab_size + 3
    text = "347+285=<think>"
    assert new.encode(text) == old.encode(text)
    assert new.encode("三百加") == [old.vocab_size, old.vocab_size + 1, old.vocab_size + 2]


@pytest.mark.parametrize("init", ["mean", "mapped"])
def test_extend_vocabulary_keeps_old_logits(init):
    model = small_model()
    sources = [[3], [4, 5], []] if init == "mapped" else None
    new = extend_vocabulary(model, 3, init=init, sources=sources)
    x = tokens()
    old_logits, new_logits = model(x).logits, new(x).logits
    assert new_logits.shape[-1] == 53
    assert torch.equal(new_logits[..., :50], old_logits)
    emb = model.embed.weight
    expected = [emb[3], emb[[4, 5]].mean(0), emb.mean(0)] if init == "mapped" else [emb.mean(0)] * 3
    torch.testing.assert_close(new.embed.weight[50:], torch.stack(expected))


def test_extend_vocabulary_rejects_bad_arguments():
    model = small_model()
    with pytest.raises(ValueError, match="n_new"):
        extend_vocabulary(model, 0)
    with pytest.raises(ValueError, match="init"):
        extend_vocabulary(model, 1, init="zeros")
    with pytest.raises(ValueError, match="source ids"):
        extend_vocabulary(model, 1, init="mapped", sources=[[99]])


# --- new experts, frozen old ones ---------------------------------------------------------------------------

class _Steps:
    lr, warmup, steps, min_lr_ratio, grad_clip = 1e-2, 0, 5, 1.0, 1.0


def test_new_experts_keep_old_groups_and_the_frozen_experts_stay_bitwise_unchanged():
    model = small_model()
    n_old, per_group = model.cfg.n_routed_experts, model.cfg.n_routed_experts // model.cfg.n_group
    new = add_experts(model, per_group, bias_update_speed=0.0)
    assert new.cfg.n_routed_experts == n_old + per_group and new.cfg.n_group == model.cfg.n_group + 1
    before = {k: v.clone() for k, v in new.state_dict().items()}
    new.requires_grad_(False)
    hooks = []
    for name, p in new.named_parameters():
        if ".ffn.experts." in name and int(name.split(".ffn.experts.")[1].split(".")[0]) >= n_old:
            p.requires_grad_(True)
        elif name.endswith("router.weight"):
            hooks.append(freeze_rows(p, n_old))
    optimizer = make_optimizer(new, _Steps.lr, weight_decay=0.0)
    x = tokens()
    for step in range(_Steps.steps):
        out = new.train()(x)
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), x.roll(-1, 1).flatten())
        training_step(new, optimizer, loss, out, step=step, cfg=_Steps)
    after = new.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed, "the new experts did not train"
    for key in changed:
        if key.endswith("router.weight"):
            assert torch.equal(after[key][:n_old], before[key][:n_old])  # old router rows: bitwise
        else:
            assert int(key.split(".ffn.experts.")[1].split(".")[0]) >= n_old, key
    with pytest.raises(ValueError, match="multiple"):
        add_experts(model, per_group + 1)


@pytest.mark.parametrize("method", ["lora", "experts", "embeddings"])
def test_frozen_base_methods_move_only_their_own_parameters(method):
    """chapter 11's frozen-base methods (minimoe.localise.prepare): after training, every base weight and every
    old vocabulary row is bitwise the start model's; only LoRA matrices, new experts, new router rows and new
    vocabulary rows moved."""
    from minimoe.localise import LocaliseConfig, prepare

    model, n_old_vocab = small_model(), 40
    per_group = model.cfg.n_routed_experts // model.cfg.n_group
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained, _, hooks = prepare(method, model, LocaliseConfig(n_new_experts=per_group), n_old_vocab)
    optimizer = make_optimizer(trained, _Steps.lr, weight_decay=0.0)
    x = tokens()
    for step in range(_Steps.steps):
        out = trained.train()(x)
        loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), x.roll(-1, 1).flatten())
        training_step(trained, optimizer, loss, out, step=step, cfg=_Steps)
    for hook in hooks:
        hook.remove()
    n_old = model.cfg.n_routed_experts
    moved = []
    for key, value in trained.state_dict().items():
        if "lora_" in key:
            continue
        old = before.get(key.replace(".base.", "."))
        if old is None:
            assert method == "experts" and int(key.split(".ffn.experts.")[1].split(".")[0]) >= n_old, key
            continue
        n_kept = n_old_vocab if key in ("embed.weight", "head.weight") else n_old if key.endswith(
            "router.weight") else len(old)
        assert torch.equal(value[:n_kept], old[:n_kept]), key
        moved += [key] if not torch.equal(value, old) else []
    assert "embed.weight" in moved or "head.weight" in moved  # the new rows trained


def test_the_comparison_in_two_processes_gives_the_numbers_of_one():
    """chapter 11 runs ``minimoe.localise.compare(workers=2)``: every run is seeded on its own, so the accuracies
    and the trained weights equal those of one process."""
    from minimoe.localise import LocaliseConfig, compare

    cfg = LocaliseConfig(steps=3, batch_size=4, eval_n=4)
    one, two = (compare(("full", "lora"), (0, 1), cfg, workers=w) for w in (1, 2))
    assert [(r.method, r.seed) for r in two["runs"]] == [("full", 0), ("full", 1), ("lora", 0), ("lora", 1)]
    for a, b in zip(one["runs"], two["runs"]):
        assert (a.local, a.original, a.params_trained) == (b.local, b.original, b.params_trained)
        assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))


def test_expert_shares_rows_sum_to_one():
    model = small_model()
    x = tokens()
    shares = expert_shares(model, x, x > 25)
    assert shares.shape == (1, model.cfg.n_routed_experts)
    torch.testing.assert_close(shares.sum(-1), torch.ones(1))


def test_freeze_rows_and_n_trainable():
    model = small_model()
    model.requires_grad_(False)
    model.embed.weight.requires_grad_(True)
    freeze_rows(model.embed.weight, 40)
    model.embed(tokens()).sum().backward()
    assert model.embed.weight.grad[:40].abs().sum() == 0
    assert n_trainable(model, {"embed.weight": 40}) == 10 * model.cfg.hidden_size


# --- replay ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fraction,batch", [(0.0, 8), (0.25, 32), (0.5, 7), (1.0, 4)])
def test_replay_rows_hold_the_fraction(fraction, batch):
    generator = torch.Generator().manual_seed(0)
    local, original = replay_rows(100, 50, batch, fraction, generator)
    assert len(original) == round(fraction * batch) and len(local) + len(original) == batch
    assert (local < 100).all() and (original < 50).all()


def test_replay_rows_reject_bad_arguments():
    generator = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="fraction"):
        replay_rows(10, 10, 8, 1.5, generator)
    with pytest.raises(ValueError, match="n_original"):
        replay_rows(10, 0, 8, 0.5, generator)
