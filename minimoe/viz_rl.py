"""One dashboard for GRPO runs: everything ``GRPOTrainer.history`` records that a practitioner watches, on one figure.

Each panel answers one question about a run (chapter 12 reproduces the failure each one reveals):

    reward            is the reward rising, and which term of a combined reward moves it?
    accuracy          does the checked accuracy follow the reward (sampled), and the held-out one (greedy)?
    zero-std groups   how many groups have equal rewards, hence zero advantage and no gradient?
    clipped tokens    how often the clip acts, below (ρ < 1 − ε_low, Â < 0) and above (ρ > 1 + ε_high, Â > 0)?
    entropy           is the policy still exploring, or collapsing onto one answer?
    length            are completions growing, are wrong ones longer than right ones, are they cut off?
    KL                how far has the policy moved from the reference?
    GRPO loss, grad   the loss is ~0 by construction (advantages sum to 0 per group); the gradient norm is not
    expert load       does the MoE policy keep its experts balanced (MaxVio, Wang et al. 2024)?

``matplotlib`` only; histories are ``minimoe.history.History`` objects (or anything with the same columns).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from minimoe.history import History

DASHBOARD_PANELS = ("reward", "accuracy", "zero-std groups", "clipped tokens", "entropy", "length", "KL",
                    "GRPO loss and gradient norm", "expert load")
"""The panels of ``plot_grpo_dashboard``, in order (row by row)."""


def _column(history: History, name: str) -> list:
    return history.columns.get(name, [])


def _finite(values: Sequence) -> bool:
    return any(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _max_vio(history: History) -> list[float]:
    """MaxVio of the last MoE layer, per step (NaN on steps without an update)."""
    return [vio[-1] if vio else math.nan for vio in _column(history, "max_vio")]


def plot_grpo_dashboard(runs: History | Mapping[str, History], *, title: str | None = None,
                        figsize: tuple[float, float] = (15.0, 8.4)) -> Figure:
    """Draw ``DASHBOARD_PANELS`` for one GRPO history, or overlay several (a mapping label → history, one colour
    each, e.g. a failure and its fix). Reward terms (``reward_<term>`` columns of a ``CombinedReward``) are dashed,
    held-out accuracy (``eval_step``, ``eval_accuracy``) is drawn with markers, right and wrong lengths dotted.
    Returns the figure; ``figure.axes`` holds the panels in ``DASHBOARD_PANELS`` order.

    Shapes: each history's per-step columns have one value per step; ``max_vio`` one value per MoE layer per step.
    """
    if isinstance(runs, History):
        runs = {"": runs}
    if not runs or not all(isinstance(h, History) for h in runs.values()):
        raise ValueError("runs must be a History or a non-empty mapping of labels to Histories")
    fig, grid = plt.subplots(2, 5, figsize=figsize)
    axes = dict(zip(DASHBOARD_PANELS, grid.flat))
    grid.flat[-1].remove()  # nine panels on a 2 × 5 grid
    for index, (label, history) in enumerate(runs.items()):
        color, name = f"C{index}", label or None
        steps = _column(history, "step")
        axes["reward"].plot(steps, _column(history, "reward"), color=color, label=name)
        for term_index, column in enumerate(c for c in history.columns if c.startswith("reward_")):
            axes["reward"].plot(steps, history.columns[column], color=color, alpha=0.6,
                                linestyle=("--", ":", "-.")[term_index % 3], label=f"{label} {column[7:]}".strip())
        axes["accuracy"].plot(steps, _column(history, "accuracy"), color=color, label=f"{label} sampled".strip())
        if _column(history, "eval_step"):
            axes["accuracy"].plot(history.eval_step, history.eval_accuracy, color=color, marker="o", linestyle="--",
                                  label=f"{label} held-out".strip())
        axes["zero-std groups"].plot(steps, _column(history, "zero_std_groups"), color=color, label=name)
        axes["clipped tokens"].plot(steps, _column(history, "clip_low"), color=color, linestyle="--",
                                    label=f"{label} low".strip())
        axes["clipped tokens"].plot(steps, _column(history, "clip_high"), color=color, label=f"{label} high".strip())
        axes["entropy"].plot(steps, _column(history, "entropy"), color=color, label=name)
        axes["length"].plot(steps, _column(history, "response_length"), color=color, label=name)
        for column, style in (("length_correct", ":"), ("length_wrong", "-.")):
            if _finite(_column(history, column)):
                axes["length"].plot(steps, history.columns[column], color=color, linestyle=style, alpha=0.7,
                                    label=f"{label} {column[7:]}".strip())
        axes["KL"].plot(steps, _column(history, "kl"), color=color, label=name)
        axes["GRPO loss and gradient norm"].plot(steps, _column(history, "grpo_loss"), color=color,
                                                 label=f"{label} loss".strip())
        axes["GRPO loss and gradient norm"].plot(steps, _column(history, "grad_norm"), color=color, linestyle=":",
                                                 label=f"{label} grad norm".strip())
        axes["expert load"].plot(steps, _max_vio(history), color=color, label=name)
    ylabels = {"reward": "mean reward (terms unweighted)", "accuracy": "fraction right", "zero-std groups":
               "fraction of groups", "clipped tokens": "fraction of tokens", "entropy": "nats per token",
               "length": "tokens", "KL": "k3 KL to reference", "GRPO loss and gradient norm": "",
               "expert load": "MaxVio (last MoE layer)"}
    for name, ax in axes.items():
        ax.set(title=name, xlabel="step", ylabel=ylabels[name])
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
