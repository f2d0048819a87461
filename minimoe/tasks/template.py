"""The R1-Zero prompt template and a parser for `<think>…</think><answer>…</answer>` completions.

DeepSeek-R1 §2.2.3 (Table 1) trains R1-Zero with a template that only fixes the format: reasoning inside
`<think> </think>`, the final answer inside `<answer> </answer>`. Its rewards (DeepSeek-R1 §2.2.2) are rule-based: an
accuracy reward for the checked answer and a format reward that requires the thinking between `<think>` tags (our
format reward is stricter and asks for the whole structure: see ``minimoe.rl.rewards.format_reward``). The parsers
below feed both rewards and must never raise, whatever a policy writes: missing or nested tags, garbage, huge numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# DeepSeek-R1 §2.2.3, Table 1, with the question in place of "prompt".
R1_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
    "User: {question}. Assistant:"
)
# The same instruction reduced to its example clause, short enough for a character model's context.
COMPACT_TEMPLATE = "<think> reasoning </think> <answer> answer </answer>\nUser: {question}\nAssistant:"
TEMPLATES = {"r1": R1_TEMPLATE, "compact": COMPACT_TEMPLATE}

_LAST_ANSWER = re.compile(r"<answer>((?:(?!</?answer>).)*)</answer>", re.DOTALL)


class Checkable(Protocol):
    """What a task's problem provides: the question text and a checker of an answer string."""

    question: str

    def is_correct(self, answer: str) -> bool: ...


def format_prompt(question: str, template: str = "compact") -> str:
    """The prompt for `question`: `template` is "r1", "compact" or a format string containing "{question}"."""
    text = TEMPLATES.get(template, template)
    if "{question}" not in text:
        raise ValueError(f"template must be one of {sorted(TEMPLATES)} or contain '{{question}}'; got {template!r}")
    return text.replace("{question}", question)


def format_completion(think: str, answer: str) -> str:
    """A well-formed completion, e.g. for supervised warm-up data."""
    return f"{THINK_OPEN}{think}{THINK_CLOSE}{ANSWER_OPEN}{answer}{ANSWER_CLOSE}"


@dataclass(frozen=True)
class ParsedCompletion:
    """`think` and `answer` are the tag contents (None when absent); `well_formed` is the R1 format rule."""

    think: str | None
    answer: str | None
    well_formed: bool


def _contains_tag(text: str) -> bool:
    return any(tag in text for tag in TAGS)


def extract_answer(completion: str) -> str | None:
    """Contents of the last innermost `<answer>…</answer>` pair, stripped; None when there is none."""
    matches = _LAST_ANSWER.findall(completion)
    return matches[-1].strip() if matches else None


def parse_completion(completion: str) -> ParsedCompletion:
    """Split a completion into thought and answer and decide whether it follows the format.

    Well formed: optional whitespace, `<think>`, text without tags, `</think>`, optional whitespace, `<answer>`,
    text without tags, `</answer>`, optional whitespace — nothing else. Linear time, never raises.
    """
    think = None
    start = completion.find(THINK_OPEN)
    end = completion.find(THINK_CLOSE, start) if start >= 0 else -1
    if end >= 0:
        think = completion[start + len(THINK_OPEN):end]
    answer = extract_answer(completion)

    text = completion.strip()
    well_formed = False
    if text.startswith(THINK_OPEN) and text.endswith(ANSWER_CLOSE):
        body = text[len(THINK_OPEN):-len(ANSWER_CLOSE)]
        thought, sep, rest = body.partition(THINK_CLOSE)
        rest = rest.lstrip()
        if sep and rest.startswith(ANSWER_OPEN):
            content = rest[len(ANSWER_OPEN):]
            well_formed = not _contains_tag(thought) and not _contains_tag(content)
    return ParsedCompletion(think=think, answer=answer, well_formed=well_formed)


def check_answer(problem: Checkable, completion: str) -> bool:
    """DeepSeek-R1 §2.2.2 accuracy rule: the answer inside the answer tags is correct for `problem`."""
    answer = extract_answer(completion)
    return answer is not None and problem.is_correct(answer)
