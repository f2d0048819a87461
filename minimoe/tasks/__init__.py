"""Synthetic tasks: language-model sequences for pre-training and verifiable problems for RL."""

from minimoe.tasks.sequences import CopyTask, MarkovGrammar, ModularProgression
from minimoe.tasks.arithmetic import ArithmeticProblem, ArithmeticTask
from minimoe.tasks.countdown import CountdownProblem, CountdownTask, evaluate_expression
from minimoe.tasks.splits import draw_unique, split_of
from minimoe.tasks.template import (COMPACT_TEMPLATE, R1_TEMPLATE, TEMPLATES, ParsedCompletion, check_answer,
                                    extract_answer, format_completion, format_prompt, parse_completion)
from minimoe.tasks.tokenizer import CharTokenizer

__all__ = [
    "COMPACT_TEMPLATE", "R1_TEMPLATE", "TEMPLATES", "ArithmeticProblem", "ArithmeticTask", "CharTokenizer", "CopyTask",
    "CountdownProblem", "CountdownTask", "MarkovGrammar", "ModularProgression", "ParsedCompletion", "check_answer",
    "draw_unique", "evaluate_expression", "extract_answer", "format_completion", "format_prompt", "parse_completion",
    "split_of",
]
