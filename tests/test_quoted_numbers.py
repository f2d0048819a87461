"""The parameter counts that chapters 9–10 and book/sources.md quote in their prose are the ones minimoe.accounting
computes, not numbers typed in beside the code: every count of a million or more written with thousands separators
(684,489,845,504), and every count in billions with two or three decimals (13.46B, 36.626B), must be one of the
values below, each computed from a preset's config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from minimoe.accounting import count_params, fp8_weight_scales
from minimoe.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["notebooks/09_fp8_training.ipynb", "notebooks/10_multi_token_prediction.ipynb", "book/sources.md"]
EXACT = re.compile(r"(?<![\d.])(?<!\d,)\d{1,3}(?:,\d{3}){2,}(?!,?\d)")  # 1,000,000 and more
BILLIONS = re.compile(r"(?<![\d,.])(\d+\.\d{2,3})B")  # 13.46B, 36.626B


def prose(name: str) -> str:
    path = ROOT / name
    if path.suffix != ".ipynb":
        return path.read_text(encoding="utf-8")
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


def computed() -> set[int]:
    """Every count the accounting gives for the published presets, and the sums the texts quote."""
    values = set()
    for name in ("deepseek-v2-lite", "deepseek-v2", "deepseek-v3"):
        cfg = ModelConfig.from_preset(name)
        p = count_params(cfg)
        fields = {k: getattr(p, k) for k in p.__dataclass_fields__}
        properties = {k: getattr(p, k) for k in ("total", "total_with_mtp", "checkpoint_total", "active",
                                                 "active_with_embedding", "matmul_active")}
        scales = fp8_weight_scales(cfg)
        m_k = cfg.num_nextn_predict_layers * 2 * cfg.hidden_size**2  # M_k (eh_proj), d × 2d per module
        values |= set(fields.values()) | set(properties.values())
        values |= {scales, p.checkpoint_total + scales, p.mtp + p.mtp_copies, p.mtp - m_k}
    return {v for v in values if v}


VALUES = computed()


@pytest.mark.parametrize("name", TEXTS)
def test_counts_in_the_prose_are_computed_by_the_accounting(name):
    text = prose(name)
    typed = [n for n in EXACT.findall(text) if int(n.replace(",", "")) not in VALUES]
    assert not typed, f"{name} quotes counts that minimoe.accounting does not compute: {typed}"
    billions = {round(v / 1e9, d) for v in VALUES for d in (2, 3)}
    typed = [n for n in BILLIONS.findall(text) if float(n) not in billions]
    assert not typed, f"{name} quotes billions that minimoe.accounting does not compute: {typed}"


def test_the_hub_figures_of_chapter_10_and_sources():
    """The numbers the erratum names, in the texts that quote them, against the accounting."""
    cfg = ModelConfig.from_preset("deepseek-v3")
    p, scales = count_params(cfg), fp8_weight_scales(cfg)
    for name in ("notebooks/10_multi_token_prediction.ipynb", "book/sources.md"):
        text = prose(name)
        for value in (p.checkpoint_total, scales, p.checkpoint_total + scales):
            assert f"{value:,}" in text, f"{name} does not quote {value:,}"
    assert (p.checkpoint_total, scales, p.checkpoint_total + scales) == (684_489_845_504, 41_540_496,
                                                                         684_531_386_000)


def test_the_pattern_catches_a_typed_in_count():
    assert EXACT.findall("is 684,489,845,505 parameters, 2,788K GPU-hours") == ["684,489,845,505"]
    assert 684_489_845_505 not in VALUES and 684_489_845_504 in VALUES
    assert BILLIONS.findall("holds 13.46B, about 14B, 36.626B") == ["13.46", "36.626"]
