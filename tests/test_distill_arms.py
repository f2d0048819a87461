"""minimoe.distill_arms: the t-interval, the arms' settings, chapter 8's seed, the RL arm, the benchmark."""

import pytest
import torch


def test_t_quantile_matches_the_table_and_paired_difference_pairs():
    from minimoe.distill_arms import paired_difference, t_quantile

    for df, value in ((1, 12.7062), (4, 2.7764), (7, 2.3646), (30, 2.0423)):  # Student's t, 0.975 quantile
        assert abs(t_quantile(0.975, df) - value) < 1e-3
    mean, half = paired_difference([0.5, 0.6, 0.7], [0.4, 0.4, 0.6])
    assert abs(mean - 0.4 / 3) < 1e-12  # differences 0.1, 0.2, 0.1
    assert abs(half - t_quantile(0.975, 2) * 0.057735 / 3**0.5) < 1e-5  # sd of (0.1, 0.2, 0.1) = 0.057735
    with pytest.raises(ValueError, match="paired"):
        paired_difference([0.5], [0.4])
    with pytest.raises(ValueError, match="df"):
        t_quantile(0.975, 0)


def test_arms_config_rejects_bad_settings():
    from minimoe.distill_arms import ArmsConfig

    with pytest.raises(ValueError, match="rl_steps"):
        ArmsConfig(rl_steps=0)
    with pytest.raises(ValueError, match="rl_lr"):
        ArmsConfig(rl_lr=-1e-4)


def test_chapter_8_is_the_benchmarks_seed_0():
    """Chapter 8 runs minimoe.distill_arms with the benchmark's own settings (ArmsConfig() unchanged, seed 0, one of
    the benchmark's default seeds), and its prose types in no measured percentage: every percentage or point count
    in its Markdown is a published figure that book/sources.md lists with its source (the benchmark's own numbers,
    which sources.md also quotes, do not count)."""
    import ast
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cells = json.loads((root / "notebooks/08_distillation.ipynb").read_text(encoding="utf-8"))["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "CFG, SEED = ArmsConfig(), 0" in code and "run_arms(teacher, base, traces, SEED, CFG" in code
    bench = ast.parse((root / "benchmarks/distill_demo.py").read_text(encoding="utf-8"))
    seeds = [k.value for n in ast.walk(bench) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "add_argument" and n.args and ast.literal_eval(n.args[0]) == "--seeds"
             for k in n.keywords if k.arg == "default"]
    assert len(seeds) == 1 and 0 in eval(ast.unparse(seeds[0])), "the chapter's seed is one of the benchmark's"
    assert "cfg = QUICK if args.quick else ArmsConfig()" in ast.unparse(bench)
    prose = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    sources = "\n".join(line for line in (root / "book/sources.md").read_text(encoding="utf-8").splitlines()
                        if "distill_demo" not in line)  # the papers' figures, not the benchmark's
    quoted = re.findall(r"(\d+(?:\.\d+)?)\s*(?:%|points)(?! ?t-interval| ?CI)", prose)  # not "95% t-interval"
    typed = [q for q in quoted if not re.search(rf"(?<![\d.]){re.escape(q)}(?![\d])", sources)]
    assert not typed, f"chapter 8 types in numbers that no source lists: {typed}"


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rl_arm_never_ends_below_its_start(seed):
    """The RL arm's recipe (ArmsConfig's rl_lr and rl_steps, the chapter's and the benchmark's) improves the student
    base it starts from; chapter 7's recipe took these seeds from 46.0 / 16.5 / 24.0% to 7.5 / 0.5 / 0.5%."""
    import copy

    from minimoe.distill_arms import ArmsConfig, run_rl, student_base
    from minimoe.rl import demo

    torch.set_num_threads(1)
    cfg = ArmsConfig()
    base = student_base(seed, cfg)
    student = copy.deepcopy(base)
    history = run_rl(student, seed, cfg)
    before, after = (demo.heldout_accuracy(m, cfg.eval_n)["accuracy"] for m in (base, student))
    assert len(history.step) == cfg.rl_steps
    assert after >= before, f"seed {seed}: GRPO took the student from {before:.1%} to {after:.1%}"


@pytest.mark.slow
def test_distill_demo_quick():
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, str(root / "benchmarks/distill_demo.py"), "--quick"], check=False,
                            cwd=root,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for words in ("RL ended below its starting accuracy on", "traces − rl:", "95% CI", "held-out accuracy: teacher"):
        assert words in result.stdout


def test_arms_in_two_processes_give_the_numbers_of_one():
    """``run_arms(workers=2)`` trains the arms in forked processes; every arm is seeded on its own, so the
    accuracies, steps and histories equal those of one process."""
    from minimoe.distill_arms import ARMS, ArmsConfig, run_arms, sample_traces, student_base
    from minimoe.rl import demo

    torch.set_num_threads(1)
    cfg = ArmsConfig(teacher_steps=1, student_sft_steps=2, trace_prompts=16, trace_samples=1, rl_steps=1,
                     sft_steps=2, kd_steps=2, eval_n=4)
    teacher, base = demo.load_sft_policy(), student_base(0, cfg)
    traces = sample_traces(teacher, 0, cfg)
    one, two = (run_arms(teacher, base, traces, 0, cfg, base_cpu=0.0, trace_cpu=0.0, workers=w) for w in (1, 2))
    assert one.accuracy == two.accuracy and one.steps == two.steps
    for arm in ARMS:
        assert all(torch.equal(a, b) for a, b in zip(one.students[arm].state_dict().values(),
                                                     two.students[arm].state_dict().values())), arm
    with pytest.raises(ValueError, match="workers"):
        run_arms(teacher, base, traces, 0, cfg, base_cpu=0.0, trace_cpu=0.0, workers=0)
