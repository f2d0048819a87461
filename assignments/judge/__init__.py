"""The judge: grade items per lab, run in the trusted process; the student's code answers calls from the sandbox.

``LABS`` maps an assignment to its judge module, which defines ``ITEMS`` (``core.Item``s) and ``STUBS`` (the
reference implementations its sandbox's ``minimoe`` copy lacks). A lab without a module here cannot be graded yet.
"""

from __future__ import annotations

import importlib

PORTED = ("a1_mla", "a2_moe_routing", "a3_grpo", "a4_efficient_training", "a5_adapting")


def lab(assignment: str):
    """The judge module of `assignment`; ValueError naming the labs that have one."""
    if assignment not in PORTED:
        raise ValueError(f"{assignment!r} has no judge yet (ported: {', '.join(PORTED)}); it cannot be graded "
                         "by grade.py until assignments/judge/ has a module for it")
    return importlib.import_module(f"judge.{assignment}")
