"""The judge of a3_grpo: group advantages, the k3 KL, the clipped loss and its aggregations, rule-based rewards,
and 4 GRPO steps of chapter 7's policy trained with the student's loss (13 points over 25 items).

References: the judge's own ``minimoe.rl`` and ``minimoe.tasks.template`` (trusted); the sandbox's copy of those
modules raises "not available while grading" in everything the lab asks students to write (:data:`STUBS`).

The training item runs its loop here, in the trusted process: ``minimoe.rl.demo.make_trainer`` samples, rewards and
scores with the judge's own code and calls, for each of its optimiser passes, a loss function that sends the
detached token tensors to the student's ``grpo_loss`` with ``grad=(0,)``. The sandbox returns the loss value ``v``
and its gradient ``g`` with respect to ``logprobs`` (computed there by autograd through the student's code); the
judge hands the trainer ``v + sum((logprobs - logprobs.detach()) * g)``, whose value is exactly ``v`` and whose
gradient with respect to ``logprobs`` is exactly ``g``, so backpropagation into the policy applies the student's
own gradient by the chain rule. (Recomputing the loss with the reference and comparing only the value would train
with the reference's gradient: a loss with a right value and a wrong or missing gradient would pass.)
"""

from __future__ import annotations

import functools

import torch

from judge.core import Failed, Item, call, check_tensor, unchanged
from judge.remote import KINDS, CallFailed, Remote
from minimoe.rl import demo, grpo
from minimoe.tasks.template import extract_answer, parse_completion

STUBS = {"minimoe.rl.grpo": ["group_advantages", "kl_k3", "clipped_surrogate", "grpo_loss"],
         "minimoe.rl.rewards": ["accuracy_reward", "format_reward"],
         "minimoe.tasks.template": ["extract_answer", "parse_completion", "check_answer", "_contains_tag",
                                    "_LAST_ANSWER"]}

F32, F64 = torch.float32, torch.float64


# -- Part 1: group_advantages -------------------------------------------------------------------------------------
def _advantages(b: int, g: int, scale: str, dtype: torch.dtype):
    def check(remote, gen):
        r = (torch.randint(0, 3, (b,), generator=gen).double() + torch.rand(b, generator=gen, dtype=F64)).to(dtype)
        reply = call(remote, "group_advantages", r, g, scale, full=True)
        unchanged("group_advantages", reply, (r,))
        check_tensor("group_advantages", reply["value"], grpo.group_advantages(r, g, scale), 1e-5)
    return check


def _advantages_fixed(cases):
    def check(remote, gen):
        for rewards, g, scale in cases:
            grouped = torch.tensor(rewards).view(-1, g)  # (B/G, G)
            r = grouped[torch.randperm(grouped.shape[0], generator=gen)].reshape(-1)  # the groups in a drawn order
            check_tensor("group_advantages", call(remote, "group_advantages", r, g, scale),
                         grpo.group_advantages(r, g, scale), 1e-5)
    return check


# -- Part 2: kl_k3 ------------------------------------------------------------------------------------------------
def _kl(shape, spread: float, dtype: torch.dtype):
    def check(remote, gen):
        lp = (-torch.rand(*shape, generator=gen, dtype=F64) * 4).to(dtype)
        ref = lp + spread * torch.randn(*shape, generator=gen, dtype=F64).to(dtype)
        reply = call(remote, "kl_k3", lp, ref, full=True)
        unchanged("kl_k3", reply, (lp, ref))
        check_tensor("kl_k3", reply["value"], grpo.kl_k3(lp, ref), 1e-9 if dtype == F64 else 1e-5)
    return check


# -- Part 3: grpo_loss --------------------------------------------------------------------------------------------
def _tokens(gen, lengths, dtype, spread=0.3):
    """Log-probs (B, T) of the policy, the old policy and the reference, a mask of `lengths` real tokens, and
    advantages (B,); `lengths` None: 6 rows of random lengths (each at least 1) over T = 7."""
    t = 7
    lengths = torch.randint(1, t + 1, (6,), generator=gen) if lengths is None else torch.tensor(lengths)
    b = len(lengths)
    lp = -torch.rand(b, t, generator=gen, dtype=F64) * 3
    old = lp + spread * torch.randn(b, t, generator=gen, dtype=F64)
    ref = lp + 0.3 * torch.randn(b, t, generator=gen, dtype=F64)
    mask = (torch.arange(t) < lengths[:, None]).double()
    adv = torch.randn(b, generator=gen, dtype=F64)
    return tuple(x.to(dtype) for x in (lp, old, adv, mask, ref))


def _reference_loss(lp, old, adv, mask, ref, loss_type, eps_low, eps_high, beta, l_max) -> tuple[torch.Tensor, ...]:
    """The reference loss and its gradient with respect to `lp`."""
    x = lp.clone().requires_grad_()
    loss, _ = grpo.grpo_loss(x, old, adv, mask, ref_logprobs=ref, beta=beta, epsilon_low=eps_low,
                             epsilon_high=eps_high, loss_type=loss_type, max_completion_length=l_max)
    grad, = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def _loss_with_grad(remote: Remote, args: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's loss and its gradient with respect to logprobs (args[0]), both checked for type and shape."""
    try:
        reply = remote.grpo_loss(*args, grad=(0,))
    except CallFailed as err:
        if err.kind == "raised":  # autograd failing on a result that does not depend on logprobs, or the function
            call(remote, "grpo_loss", *args)  # itself: a plain call tells the two apart
            raise Failed("grpo_loss: no gradient reaches logprobs") from None
        raise Failed(f"grpo_loss: {KINDS[err.kind]}") from None
    value, grads = reply["value"], reply.get("grads")
    _scalar(value)
    if not isinstance(grads, tuple) or len(grads) != 1 or grads[0] is None:
        raise Failed("grpo_loss: no gradient reaches logprobs")
    if type(grads[0]) is not torch.Tensor or grads[0].shape != args[0].shape:
        raise Failed("grpo_loss: wrong gradient shape")
    return value, grads[0]


def _scalar(value) -> None:
    if type(value) is not torch.Tensor:
        raise Failed("grpo_loss: wrong type (a 0-dim torch.Tensor is expected: the loss alone, not a tuple)")
    if value.dim() != 0:
        raise Failed("grpo_loss: wrong shape (a 0-dim tensor is expected)")


def _loss(loss_type: str, eps_low: float, eps_high: float | None, beta: float, dtype=F64, lengths=None,
          gradient: bool = False, spread: float = 0.3):
    """The student's loss (or, with `gradient`, its gradient) against the reference on drawn tokens."""
    def check(remote, gen):
        lp, old, adv, mask, ref = _tokens(gen, lengths, dtype, spread)
        l_max = lp.shape[1] + int(torch.randint(1, 9, (1,), generator=gen))
        args = (lp, old, adv, mask, loss_type, eps_low, eps_high, beta, ref, l_max)
        want, want_grad = _reference_loss(lp, old, adv, mask, ref, loss_type, eps_low, eps_high, beta, l_max)
        tol = 1e-9 if dtype == F64 else 1e-5
        if gradient:
            value, grad = _loss_with_grad(remote, args)
            check_tensor("grpo_loss", grad, want_grad, tol, "wrong gradient")
            return
        reply = call(remote, "grpo_loss", *args, full=True)
        unchanged("grpo_loss", reply, (lp, old, adv, mask, ref))
        _scalar(reply["value"])
        check_tensor("grpo_loss", reply["value"], want, tol)
    return check


# -- Part 4: accuracy_reward and format_reward --------------------------------------------------------------------
PIECES = ["<think>", "</think>", "<answer>", "</answer>", " ", "\n", "12", "7", "x", "so "]
# Chapter 7's completions of 347 + 285, then tags inside the contents, several lines, nested and repeated answer
# tags, text around the blocks, an empty completion.
EDGE = ["<think>7+5+0=12,4+8+1=13,3+2+1=06</think><answer>632</answer>",
        "<think>7+5+0=12,4+8+0=12,3+2+1=06</think><answer>622</answer>",
        "<think>7+5+0=12,4+8+1=13,3+2+1=06</think> <answer> 632 </answer>",
        "<answer>632</answer>",
        "<think>7+5+0=12</think><answer>632</answer> done",
        "<think>7+5+0=12,4+8+1=13,3+2+1=06</think><answer>632",
        "<think>...</think><answer>622</answer><answer>632</answer>",
        "<think><answer>632</answer></think><answer>632</answer>",
        "<think>7+5=12</think><answer>six hundred thirty-two</answer>",
        "<think>7+5+0=12,\n4+8+1=13,\n3+2+1=06</think>\n<answer>\n632\n</answer>\n",
        "<think>7+5<answer>=12</think><answer>632</answer>",
        "<think>7+5<think>=12</think><answer>632</answer>",
        "<think>7+5=12</think><answer>6<think>32</answer>",
        "<think>7+5=12</think><answer>632</think></answer>",
        "<answer><answer>632</answer>",
        "<answer>632</answer></answer>",
        "\t<think>1</think>\n\n<answer>632</answer>\t\n",
        "<think>1</think>x<answer>632</answer>",
        "<think>1</think><think>2</think><answer>632</answer>",
        "<think>1</think><answer>632</answer><answer>",
        "<think></think><answer></answer>",
        "</think><answer>632</answer><think>"]
EDGE_TARGETS = ["632"] * len(EDGE)
EDGE_TARGETS[13] = "632</think>"  # <think> and </think> inside an answer are part of it
# The answer is compared as a string, stripped; no tags, nothing to compare (and never an exception).
STRINGS = [("<think>7+5</think><answer>0632</answer>", "632"), ("<think>7+5</think><answer>632.0</answer>", "632"),
           ("<think>7+5</think><answer>\n 632\t</answer>", "632"), ("<think>1</think><answer></answer>", ""),
           ("632", "632"), ("", ""), ("", "632"), ("<answer>", ""), ("</answer>632<answer>", "632")]


def _accuracy(texts: list[str], targets: list[str]) -> torch.Tensor:
    return torch.tensor([float(extract_answer(t) == y) for t, y in zip(texts, targets)], dtype=F32)


def _format(texts: list[str]) -> torch.Tensor:
    return torch.tensor([float(parse_completion(t).well_formed) for t in texts], dtype=F32)


def _random_texts(gen) -> tuple[list[str], list[str]]:
    texts, targets = [], []
    for _ in range(60):
        n = int(torch.randint(1, 9, (1,), generator=gen))
        texts.append("".join(PIECES[int(j)] for j in torch.randint(0, len(PIECES), (n,), generator=gen)))
        targets.append(["12", "7", "x"][int(torch.randint(0, 3, (1,), generator=gen))])
    for _ in range(20):
        a = str(int(torch.randint(0, 20, (1,), generator=gen)))
        texts.append(f"<think>{a}</think>" + " " * int(torch.randint(0, 2, (1,), generator=gen))
                     + f"<answer>{a}</answer>")
        targets.append(a if int(torch.randint(0, 2, (1,), generator=gen)) else "-1")
    return texts, targets


def _shuffled(gen, texts: list[str], targets: list[str]) -> tuple[list[str], list[str]]:
    order = torch.randperm(len(texts), generator=gen).tolist()
    return [texts[i] for i in order], [targets[i] for i in order]


def _reward(fn: str, draw):
    def check(remote, gen):
        texts, targets = draw(gen)
        args = (texts, targets) if fn == "accuracy_reward" else (texts,)
        want = _accuracy(texts, targets) if fn == "accuracy_reward" else _format(texts)
        check_tensor(fn, call(remote, fn, *args), want, 0.0)
    return check


# -- Part 6: training ---------------------------------------------------------------------------------------------
EVAL_N, THRESHOLD, ATTEMPTS = 100, 10, 2  # problems, points of gain; keep equal to benchmarks/a3_training_sweep.py
TRAIN_SETTINGS = {"steps": 4}  # on top of minimoe.rl.demo.grpo_settings(): dapo, clip 0.2/0.28, 8 prompts x 8


def _solved(policy) -> int:
    """How many of the EVAL_N held-out additions `policy` solves, decoding greedily."""
    return round(demo.heldout_accuracy(policy, EVAL_N)["accuracy"] * EVAL_N)


@functools.cache
def _solved_before() -> int:
    return _solved(demo.load_sft_policy())


def _remote_loss(remote: Remote):
    """A ``loss_fn`` for ``GRPOTrainer`` that applies the student's loss value and gradient (module docstring)."""
    def loss_fn(logprobs, old_logprobs, advantages, mask, *, ref_logprobs, beta, epsilon_low, epsilon_high,
                loss_type, max_completion_length):
        args = (logprobs.detach(), old_logprobs, advantages, mask, loss_type, epsilon_low, epsilon_high, beta,
                ref_logprobs, max_completion_length)
        value, grad = _loss_with_grad(remote, args)
        return value.to(logprobs.dtype) + ((logprobs - logprobs.detach()) * grad.to(logprobs.dtype)).sum()
    return loss_fn


def _trains(remote, gen):
    """4 GRPO steps of the shipped SFT policy with the student's loss raise held-out accuracy by >= 10 points; a
    run that falls short is repeated once with an independent seed (a correct loss fails only when both do)."""
    seeds = [int(torch.randint(0, 2**31, (1,), generator=gen)) for _ in range(ATTEMPTS)]
    for seed in seeds:
        policy = demo.load_sft_policy()
        try:
            demo.make_trainer(policy, loss_fn=_remote_loss(remote), seed=seed, progress=False,
                              **TRAIN_SETTINGS).train()
        except FloatingPointError:
            raise Failed("grpo_loss: did not train (the loss or its gradient became NaN or inf)") from None
        if (_solved(policy) - _solved_before()) * 100 >= THRESHOLD * EVAL_N:
            return
    raise Failed("grpo_loss: did not train (held-out accuracy rose by less than 10 points in 4 GRPO steps, twice)")


ITEMS = [
    Item("test_group_advantages", "scale='group', float64", 0.5, _advantages(12, 4, "group", F64)),
    Item("test_group_advantages", "scale='batch'", 0.5, _advantages(16, 8, "batch", F64)),
    Item("test_group_advantages", "scale='none' (Dr. GRPO)", 0.25, _advantages(9, 3, "none", F64)),
    Item("test_group_advantages", "float32 rewards: float32 advantages", 0.25, _advantages(10, 5, "group", F32)),
    Item("test_group_advantages", "edge case: groups of equal rewards (zero advantage, no NaN)", 0.25,
         _advantages_fixed([([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0], 4, "group"),
                            ([1.0, 1.0, 0.0, 0.0, 1.0, 0.0], 2, "batch")])),
    Item("test_group_advantages", "edge case: one group for the whole batch", 0.25,
         _advantages_fixed([([1.1, 0.1, 1.1, 0.0, 0.1, 1.1], 6, "group"), ([0.0, 2.0, 1.0, 5.0], 4, "batch")])),
    Item("test_kl_k3", "float64, policies close together", 0.5, _kl((6, 9), 1.0, F64)),
    Item("test_kl_k3", "float32 log-probs: float32 result", 0.25, _kl((3, 4), 0.5, F32)),
    Item("test_kl_k3", "edge case: policies far apart", 0.25, _kl((2, 5), 6.0, F64)),
    Item("test_grpo_loss", "'grpo' aggregation (per completion, then over completions)", 0.75,
         _loss("grpo", 0.2, None, 0.0)),
    Item("test_grpo_loss", "'dr_grpo' aggregation (divided by B * max_completion_length)", 0.5,
         _loss("dr_grpo", 0.2, None, 0.0)),
    Item("test_grpo_loss", "'dapo' aggregation (divided by all real tokens), clip-higher", 0.5,
         _loss("dapo", 0.2, 0.28, 0.0)),
    Item("test_grpo_loss", "the KL term (beta > 0)", 0.5, _loss("grpo", 0.1, 0.3, 0.1)),
    Item("test_grpo_loss", "its gradient with respect to logprobs", 0.5,
         _loss("grpo", 0.2, 0.28, 0.04, gradient=True, spread=0.5)),
    Item("test_grpo_loss", "float32 inputs (the trainer's dtype): a float32 loss", 0.25,
         _loss("grpo", 0.2, 0.28, 0.0, dtype=F32)),
    Item("test_grpo_loss", "edge case: epsilon_high=None clips symmetrically", 0.25,
         _loss("grpo", 0.15, None, 0.0, spread=0.8)),
    Item("test_grpo_loss", "edge case: 'grpo' on padded rows of different lengths", 0.25,
         _loss("grpo", 0.2, 0.28, 0.0, lengths=[1, 3, 7, 5, 2, 7])),
    Item("test_grpo_loss", "edge case: 'dapo' on padded rows of different lengths", 0.25,
         _loss("dapo", 0.2, 0.28, 0.0, lengths=[1, 3, 7, 5, 2, 7])),
    Item("test_grpo_loss", "edge case: 'dr_grpo' on padded rows of different lengths", 0.25,
         _loss("dr_grpo", 0.2, 0.28, 0.0, lengths=[1, 3, 7, 5, 2, 7])),
    Item("test_rewards", "accuracy_reward on unseen completions", 0.75, _reward("accuracy_reward", _random_texts)),
    Item("test_rewards", "format_reward on unseen completions", 0.75, _reward("format_reward", _random_texts)),
    Item("test_rewards", "edge case: accuracy_reward with tags inside, repeated and nested", 0.5,
         _reward("accuracy_reward", lambda gen: _shuffled(gen, EDGE, EDGE_TARGETS))),
    Item("test_rewards", "edge case: format_reward with tags inside, text around, several lines", 0.5,
         _reward("format_reward", lambda gen: _shuffled(gen, EDGE, EDGE_TARGETS))),
    Item("test_rewards", "edge case: answers compared as stripped strings; no answer, empty text", 0.5,
         _reward("accuracy_reward", lambda gen: _shuffled(gen, *map(list, zip(*STRINGS))))),
    Item("test_training", "4 GRPO steps with your loss: held-out accuracy +10 points", 3.0, _trains),
]
