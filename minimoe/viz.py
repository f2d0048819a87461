"""Plotting helpers and ipywidgets explorers for the chapters.

Each function stands alone: it takes configs or numbers, draws on a given (or new) matplotlib axis and returns it,
so a notebook can restyle or combine figures. ``ipywidgets`` is imported inside the explorers only, so the package
works without the course extras.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from minimoe.accounting import count_params, kv_cache_bytes, kv_cache_per_token
from minimoe.config import ModelConfig

GIB = 2**30


def _axis(ax: Axes | None, figsize: tuple[float, float] = (6.4, 4.0)) -> Axes:
    return plt.subplots(figsize=figsize)[1] if ax is None else ax


def plot_params_total_vs_active(cfgs: Sequence[ModelConfig], ax: Axes | None = None) -> Axes:
    """Side-by-side bars of total and active parameters (billions) for each config (``count_params``).

    Shapes: one pair of bars per config.
    """
    ax = _axis(ax)
    counts = [count_params(cfg) for cfg in cfgs]
    xs = range(len(cfgs))
    for offset, label, values in [(-0.2, "total", [c.total for c in counts]),
                                  (0.2, "active per token", [c.active for c in counts])]:
        bars = ax.bar([x + offset for x in xs], [v / 1e9 for v in values], width=0.4, label=label)
        ax.bar_label(bars, fmt="%.3gB", fontsize=9)
    ax.set_xticks(list(xs), [cfg.name for cfg in cfgs])
    ax.set_ylabel("parameters (billions)")
    ax.set_title("Total vs active parameters")
    ax.legend()
    return ax


def plot_kv_cache_vs_context(cfg: ModelConfig, contexts: Sequence[int], kinds: Sequence[str] = ("mha", "gqa", "mla"),
                             *, n_groups: int = 8, bytes_per_element: float = 2, batch_size: int = 1,
                             ax: Axes | None = None) -> Axes:
    """KV-cache size (GiB) against context length for each attention kind (``kv_cache_bytes``).

    ``n_groups`` is used for ``"gqa"`` only. Both axes are logarithmic: every kind is a straight line of slope 1,
    and the vertical gap between two lines is their ratio of elements per token.

    Shapes: one line per kind, one point per context length.
    """
    ax = _axis(ax)
    for kind in kinds:
        extra = {"n_groups": n_groups} if kind == "gqa" else {}
        gib = [kv_cache_bytes(cfg, kind, n_tokens=n, batch_size=batch_size, bytes_per_element=bytes_per_element,
                              **extra) / GIB for n in contexts]
        label = f"gqa ({n_groups} groups)" if kind == "gqa" else kind
        ax.plot(contexts, gib, marker="o", markersize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(f"KV cache (GiB, {bytes_per_element:g} bytes/element, batch {batch_size})")
    ax.set_title(f"KV cache per sequence: {cfg.name}")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    return ax


def kv_cache_explorer(cfg: ModelConfig, contexts: Sequence[int] = tuple(2**k for k in range(10, 18))):
    """Sliders for ``kv_lora_rank``, heads, layers, GQA groups and context length, redrawing the cache plot.

    Built with ``ipywidgets.interactive``: its ``Output`` holds the figure and the printed sizes, so a book built
    with embedded widget state shows the initial figure even without a kernel.

    Shapes: returns the ``interactive`` widget (display it).
    """
    import ipywidgets as widgets

    def draw(kv_lora_rank: int, num_attention_heads: int, num_hidden_layers: int, n_groups: int, context: int):
        changed = cfg.replace(kv_lora_rank=kv_lora_rank, num_attention_heads=num_attention_heads,
                              num_hidden_layers=num_hidden_layers, num_key_value_heads=None)
        ax = plot_kv_cache_vs_context(changed, contexts, ("mha", "gqa", "mqa", "mla"), n_groups=n_groups)
        ax.axvline(context, color="grey", linestyle=":")
        plt.show()
        for kind in ("mha", "gqa", "mqa", "mla"):
            extra = {"n_groups": n_groups} if kind == "gqa" else {}
            print(f"{kind:>4}: {kv_cache_bytes(changed, kind, n_tokens=context, **extra) / GIB:8.2f} GiB "
                  f"at {context:,} tokens (BF16)")

    return widgets.interactive(
        draw,
        kv_lora_rank=widgets.IntSlider(value=cfg.kv_lora_rank, min=64, max=2048, step=64, description="d_c"),
        num_attention_heads=widgets.IntSlider(value=cfg.num_attention_heads, min=8, max=256, step=8,
                                              description="n_h"),
        num_hidden_layers=widgets.IntSlider(value=cfg.num_hidden_layers, min=1, max=128, description="layers"),
        n_groups=widgets.IntSlider(value=8, min=1, max=32, description="GQA n_g"),
        context=widgets.SelectionSlider(options=list(contexts), value=contexts[len(contexts) // 2],
                                        description="context"),
    )


# ------------------------------------------------------------------ chapters 1–2: attention caches
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float8": 1}


def attention_cache_explorer(cfg: ModelConfig, contexts: Sequence[int] = tuple(2**k for k in range(10, 21))):
    """Sliders for heads, key/value heads, head dim, context and dtype of an MHA/GQA/MQA cache (chapter 1).

    The figure is ``plot_kv_cache_vs_context`` for ``cfg`` with those fields changed; the printout gives each
    kind's bytes at the chosen context. Built with ``ipywidgets.interactive`` so a built book shows the first
    figure without a kernel.

    Shapes: returns the ``interactive`` widget (display it).
    """
    import ipywidgets as widgets

    def draw(num_attention_heads: int, n_kv_heads: int, head_dim: int, context: int, dtype: str):
        n_kv_heads = min(n_kv_heads, num_attention_heads)
        changed = cfg.replace(num_attention_heads=num_attention_heads, num_key_value_heads=None, head_dim=head_dim)
        nbytes = DTYPE_BYTES[dtype]
        ax = plot_kv_cache_vs_context(changed, contexts, ("mha", "gqa", "mqa"), n_groups=n_kv_heads,
                                      bytes_per_element=nbytes)
        ax.axvline(context, color="grey", linestyle=":")
        plt.show()
        mha = kv_cache_bytes(changed, "mha", n_tokens=context, bytes_per_element=nbytes)
        for kind, extra in (("mha", {}), ("gqa", {"n_groups": n_kv_heads}), ("mqa", {})):
            size = kv_cache_bytes(changed, kind, n_tokens=context, bytes_per_element=nbytes, **extra)
            label = f"gqa ({n_kv_heads} kv heads)" if kind == "gqa" else kind
            print(f"{label:>18}: {size / GIB:9.3f} GiB at {context:,} tokens ({dtype}), {size / mha:6.3f} of MHA")

    return widgets.interactive(
        draw,
        num_attention_heads=widgets.IntSlider(value=cfg.num_attention_heads, min=1, max=256, description="n_h"),
        n_kv_heads=widgets.IntSlider(value=max(cfg.num_attention_heads // 16, 1), min=1, max=256,
                                     description="kv heads"),
        head_dim=widgets.IntSlider(value=cfg.head_dim or cfg.qk_nope_head_dim, min=16, max=256, step=16,
                                   description="d_h"),
        context=widgets.SelectionSlider(options=list(contexts), value=contexts[len(contexts) // 2],
                                        description="context"),
        dtype=widgets.Dropdown(options=list(DTYPE_BYTES), value="bfloat16", description="dtype"),
    )


def plot_cache_per_token_bars(cfg: ModelConfig, n_groups: int = 8, ax: Axes | None = None) -> Axes:
    """Bars of cached elements per token per layer for MHA, GQA (``n_groups``), MQA and MLA (``kv_cache_per_token``
    divided by the layers), on a log axis, each labelled with its ratio to MLA. DeepSeek-V2 Table 1.

    Shapes: one bar per attention kind.
    """
    ax = _axis(ax)
    layers = cfg.num_hidden_layers
    per_layer = {"MHA": kv_cache_per_token(cfg, "mha") // layers,
                 f"GQA ({n_groups})": kv_cache_per_token(cfg, "gqa", n_groups=n_groups) // layers,
                 "MQA": kv_cache_per_token(cfg, "mqa") // layers,
                 "MLA": kv_cache_per_token(cfg, "mla") // layers}
    bars = ax.bar(list(per_layer), list(per_layer.values()), color=["C0", "C1", "C2", "C3"])
    ax.bar_label(bars, labels=[f"{v:,}\n({v / per_layer['MLA']:.2f}× MLA)" for v in per_layer.values()],
                 fontsize=9)
    ax.set_yscale("log")
    ax.set_ylim(min(per_layer.values()) / 4, max(per_layer.values()) * 8)
    ax.set_ylabel("cached elements per token per layer")
    ax.set_title(f"{cfg.name}: n_h {cfg.num_attention_heads}, d_h {cfg.head_dim or cfg.qk_nope_head_dim}, "
                 f"d_c {cfg.kv_lora_rank}, d_r {cfg.qk_rope_head_dim}")
    return ax


def mla_cache_explorer(cfg: ModelConfig):
    """Sliders for ``kv_lora_rank``, ``qk_rope_head_dim``, heads, head dim and GQA groups (chapter 2): MLA's cache
    per token against MHA/GQA/MQA, and the number of GQA groups with the same cache, (d_c + d_r) / (2·d_h)
    (2.25 for DeepSeek-V2/V3, DeepSeek-V2 §2.1.4).

    Shapes: returns the ``interactive`` widget (display it).
    """
    import ipywidgets as widgets

    def draw(kv_lora_rank: int, qk_rope_head_dim: int, num_attention_heads: int, qk_nope_head_dim: int,
             n_groups: int):
        changed = cfg.replace(kv_lora_rank=kv_lora_rank, qk_rope_head_dim=qk_rope_head_dim,
                              num_attention_heads=num_attention_heads, qk_nope_head_dim=qk_nope_head_dim,
                              num_key_value_heads=None, head_dim=None)
        plot_cache_per_token_bars(changed, n_groups=n_groups)
        plt.show()
        mla = kv_cache_per_token(changed, "mla")
        print(f"MLA caches {mla:,} elements per token over {changed.num_hidden_layers} layers "
              f"({mla * 2 / 1024:,.1f} KiB in BF16), {mla / kv_cache_per_token(changed, 'mha'):.2%} of MHA")
        print(f"same cache as GQA with (d_c + d_r) / (2·d_h) = ({kv_lora_rank} + {qk_rope_head_dim}) / "
              f"(2·{qk_nope_head_dim}) = {(kv_lora_rank + qk_rope_head_dim) / (2 * qk_nope_head_dim):.2f} groups")

    return widgets.interactive(
        draw,
        kv_lora_rank=widgets.IntSlider(value=cfg.kv_lora_rank, min=32, max=2048, step=32, description="d_c"),
        qk_rope_head_dim=widgets.IntSlider(value=cfg.qk_rope_head_dim, min=0, max=256, step=16, description="d_r"),
        num_attention_heads=widgets.IntSlider(value=cfg.num_attention_heads, min=1, max=256, description="n_h"),
        qk_nope_head_dim=widgets.IntSlider(value=cfg.qk_nope_head_dim, min=16, max=256, step=16, description="d_h"),
        n_groups=widgets.IntSlider(value=8, min=1, max=32, description="GQA n_g"),
    )


# ------------------------------------------------------------------ chapter 3: routing tokens to experts
ROUTER_KINDS = {  # the two published routers: (scoring_func, topk_method, norm_topk_prob)
    "softmax (V2)": ("softmax", "group_limited_greedy", False),
    "sigmoid (V3)": ("sigmoid", "noaux_tc", True),
}


def plot_routing_heatmap(scores, indices, *, n_group: int = 1, allowed=None, title: str | None = None,
                         ax: Axes | None = None) -> Axes:
    """Heat map of token-to-expert scores with every token's selected experts boxed in red.

    ``scores`` are what the router ranks (s_{i,t}, or s_{i,t} + b_i for DeepSeek-V3's selection, Eq. (16)),
    ``indices`` the experts each token selected. Thin white lines separate ``n_group`` groups (devices in
    DeepSeek-V2, nodes in V3); cells where ``allowed`` is False (groups the token may not use) are greyed out.

    Shapes: scores (N, E), indices (N, K), allowed (N, E) bool or None -> one row per token, one column per expert.
    """
    from matplotlib.patches import Rectangle

    ax = _axis(ax, figsize=(7.0, 4.5))
    values = scores.detach().float().cpu()
    n_tokens, n_experts = values.shape
    image = ax.imshow(values.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    if allowed is not None:
        blocked = (~allowed.cpu()).float().numpy()  # (N, E) 1 where the group is not kept
        ax.imshow(blocked, aspect="auto", cmap="Greys", alpha=0.55 * blocked, vmin=0, vmax=1,
                  interpolation="nearest")
    for token, experts in enumerate(indices.tolist()):
        for expert in experts:
            ax.add_patch(Rectangle((expert - 0.5, token - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.0))
    for boundary in range(1, n_group):
        ax.axvline(boundary * n_experts // n_group - 0.5, color="white", linewidth=1.5)
    ax.set_xticks(range(n_experts))
    ax.set_yticks(range(n_tokens))
    ax.tick_params(labelsize=9)
    ax.set_xlabel("expert")
    ax.set_ylabel("token")
    ax.set_title(title or f"{n_tokens} tokens × {n_experts} experts, {indices.shape[1]} selected per token")
    return ax


def plot_routing_record(record, row: int = 0, *, n_group: int = 1, ax: Axes | None = None) -> Axes:
    """``plot_routing_heatmap`` of one sequence of a model's forward: ``ModelOutput.routing[i]`` holds the
    selection scores, the chosen experts and the group mask, so nothing is recomputed here.

    Shapes: record tensors (B, T, ·); plots row ``row``: T tokens × E experts.
    """
    allowed = None if record.group_mask is None else record.group_mask[row]  # (T, E)
    scores = record.selection_scores[row].detach().float()  # (T, E), −inf outside the kept groups
    scores = scores.masked_fill(scores == float("-inf"), float("nan"))  # blank cells under the grey overlay
    return plot_routing_heatmap(scores, record.experts[row], n_group=n_group, allowed=allowed,
                                title=f"layer {record.layer}, sequence {row}", ax=ax)


def routing_explorer(logits, *, k: int = 4, n_group: int = 4, topk_group: int = 2):
    """Map a batch of tokens to experts: sliders for top-k, a selection bias on one expert, the number of groups
    and of kept groups, and a dropdown between DeepSeek-V2's softmax router and DeepSeek-V3's sigmoid router.

    Routing is ``minimoe.moe.gate.select_experts`` on ``affinity_scores(logits)`` (its ``Selection`` gives the
    gate values, the experts and the group mask); the heat map shows the selection scores
    (s, or s + b for V3) with the chosen experts boxed and the groups a token may not use greyed out. The bias is
    DeepSeek-V3's (Eq. (16)): it moves selection only, so the softmax (V2) router ignores it. The printout gives each
    expert's load and how many tokens changed experts against plain top-k. Built with ``ipywidgets.interactive``
    so a built book shows the first figure without a kernel.

    Shapes: logits (N, E) router logits u_t^T e_i -> returns the ``interactive`` widget (display it).
    """
    import ipywidgets as widgets
    import torch

    from minimoe.moe.gate import affinity_scores, select_experts

    n_tokens, n_experts = logits.shape
    groups = [g for g in range(1, n_experts + 1) if n_experts % g == 0 and (g == 1 or n_experts // g >= 2)]

    def draw(router: str, k: int, biased_expert: int, bias: float, n_group: int, topk_group: int):
        scoring_func, topk_method, norm = ROUTER_KINDS[router]
        topk_group = min(topk_group, n_group)
        if k > topk_group * (n_experts // n_group):
            print(f"k ({k}) must be <= topk_group × experts per group ({topk_group} × {n_experts // n_group}): "
                  "keep more groups or pick fewer experts")
            return
        scores = affinity_scores(logits, scoring_func)  # (N, E)
        b = torch.zeros(n_experts)
        if scoring_func == "sigmoid":
            b[biased_expert] = bias
        sel = select_experts(scores, k, topk_method=topk_method, n_group=n_group, topk_group=topk_group, bias=b,
                             norm_topk_prob=norm)
        choice = scores + b if scoring_func == "sigmoid" else scores  # (N, E): what selection ranks, unmasked
        weights, indices = sel.gate_weights, sel.experts
        plot_routing_heatmap(choice, indices, n_group=n_group, allowed=sel.group_mask,
                             title=f"{router}: top-{k}, {topk_group} of {n_group} groups"
                                   + (f", b[{biased_expert}] = {bias:+.2f}" if scoring_func == "sigmoid" else ""))
        plt.show()
        plain = select_experts(scores, k).experts  # plain top-k of the unbiased scores, no groups
        changed = sum(set(a) != set(p) for a, p in zip(indices.tolist(), plain.tolist()))
        load = torch.bincount(indices.reshape(-1), minlength=n_experts).tolist()
        print(f"tokens per expert: {load}")
        print(f"tokens whose experts differ from plain top-{k}: {changed} of {n_tokens}")
        print(f"gate values of token 0: {[round(w, 3) for w in weights[0].tolist()]} (sum {weights[0].sum():.3f})")
        if scoring_func == "softmax" and bias != 0:
            print("the selection bias is DeepSeek-V3's: the softmax (V2) router has none, so it is ignored here")

    return widgets.interactive(
        draw,
        router=widgets.Dropdown(options=list(ROUTER_KINDS), value="sigmoid (V3)", description="router"),
        k=widgets.IntSlider(value=k, min=1, max=min(8, n_experts), description="top-k"),
        biased_expert=widgets.IntSlider(value=0, min=0, max=n_experts - 1, description="biased expert"),
        bias=widgets.FloatSlider(value=0.0, min=-1.0, max=1.0, step=0.05, description="bias b_i"),
        n_group=widgets.Dropdown(options=groups, value=n_group, description="groups"),
        topk_group=widgets.IntSlider(value=topk_group, min=1, max=max(groups), description="kept groups"),
    )
