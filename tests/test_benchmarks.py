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
