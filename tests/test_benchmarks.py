"""The benchmark scripts run end to end with tiny settings (the full runs are `make bench`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], check=False,
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_mla_decode_quick():
    result = run_script("mla_decode.py", "--quick")
    assert result.returncode == 0, result.stderr
    assert "MLA-absorbed holds (kv_lora_rank + qk_rope_head_dim) x layers" in result.stdout
    assert "elements per token: OK" in result.stdout
    assert "absorbed/naive" in result.stdout


@pytest.mark.slow
def test_moe_dispatch_quick():
    result = run_script("moe_dispatch.py", "--quick")
    assert result.returncode == 0, result.stderr
    for name in ("minimoe loop", "HF eager", "HF grouped_mm", "naive mask loop", "dense SwiGLU"):
        assert name in result.stdout
    assert "torch.set_num_threads(1)" in result.stdout
    assert "forward+backward: minimoe loop takes" in result.stdout
    assert "forward: user time alone, minimoe loop takes" in result.stdout


@pytest.mark.slow
def test_grpo_demo_quick():
    result = run_script("grpo_demo.py", "--quick")
    assert result.returncode == 0, result.stderr
    assert "held-out exact match" in result.stdout and "GRPO:" in result.stdout


@pytest.mark.slow
def test_model_speed_quick():
    result = run_script("model_speed.py", "--quick")
    assert result.returncode == 0, result.stderr
    assert "prefill: minimoe takes" in result.stdout and "decode: minimoe takes" in result.stdout


def test_book_builds_names_a_chapter_that_took_over_twice_its_median(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from book_builds import report

    steady = {"00_intro": 20.0, "03_moe": 50.0}
    stalled = {"00_intro": 20.5, "03_moe": 50.0 + 300.0}  # one cell waited out a 300 s timeout
    assert report([(0, 600.0, steady)] * 4 + [(0, 900.0, steady)], limit=2.0) == []
    problems = report([(0, 600.0, steady)] * 4 + [(0, 900.0, stalled)], limit=2.0)
    assert problems == ["03_moe: 350.0 s in one build, 7.00x its median 50.0 s"]
    assert report([(0, 600.0, steady), (1, 60.0, {"00_intro": 19.0, "03_moe": None})], limit=2.0) == [
        "03_moe: executed in 1 of 2 builds", "build 2 failed (exit 1)"]
    assert "worst/median" in capsys.readouterr().out
