"""Output cloning of a language model: sample completions of the attacker's prompts through
the API, and train a student on the (prompt, completion) pairs (plain distillation from
sampled text, as the seeds describe: "generate diverse inputs, query the target, train a
student on the pairs").

The student is any ``transformers`` causal LM the attacker can build: a fresh model of a
public architecture ("from scratch"), or the public base model a private fine-tune started
from. Fidelity is measured by the defender on held-out text: next-token top-1 agreement with
the victim and KL(victim || student), at every token budget the caller asks for.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelshield.oracle.lm import LMOracle


@dataclass
class CloneCheckpoint:
    tokens: int
    queries: int
    cost: float
    agreement: float
    kl: float


@dataclass
class LMClone:
    student: Any
    checkpoints: list[CloneCheckpoint] = field(default_factory=list)
    seconds: float = 0.0


def sample_pairs(oracle: LMOracle, prompts: Sequence[Sequence[int]], completion_tokens: int,
                 batch: int = 32) -> list[list[int]]:
    """Prompt + sampled completion (temperature 1), one sequence per prompt."""
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch):
        chunk = [list(p) for p in prompts[start:start + batch]]
        answers = oracle.complete(chunk, max_tokens=completion_tokens, temperature=1.0)
        out.extend(p + a.tokens for p, a in zip(chunk, answers, strict=True))
    return out


def train_student(student: Any, sequences: list[list[int]], prompt_len: int, steps: int,
                  seed: int, lr: float = 2e-3, batch: int = 16) -> Any:
    """Next-token training on the completions (the prompt is context, not a target)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    width = max(len(s) for s in sequences)
    ids = np.zeros((len(sequences), width), dtype=np.int64)
    labels = np.full((len(sequences), width), -100, dtype=np.int64)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = s
        labels[i, prompt_len:len(s)] = s[prompt_len:]
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    student.train()
    for _ in range(steps):
        pick = rng.integers(0, len(sequences), min(batch, len(sequences)))
        loss = student(input_ids=torch.as_tensor(ids[pick]),
                       labels=torch.as_tensor(labels[pick])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    student.eval()
    return student


def fidelity(victim_logits: Callable[[list[int]], np.ndarray], student: Any,
             texts: Sequence[Sequence[int]]) -> tuple[float, float]:
    """Next-token top-1 agreement and mean KL(victim || student) over every position."""
    import torch

    agree, kls, n = 0.0, 0.0, 0
    with torch.no_grad():
        for t in texts:
            zv = victim_logits(list(t)).astype(np.float64)
            zs = student(input_ids=torch.tensor([list(t)])).logits[0].double().numpy()
            lv = zv - _lse(zv)
            ls = zs - _lse(zs)
            agree += float(np.sum(zv.argmax(1) == zs.argmax(1)))
            kls += float(np.sum(np.exp(lv) * (lv - ls)))
            n += len(t)
    return agree / n, kls / n


def _lse(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return np.asarray(m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))


def clone_lm(oracle: LMOracle, student: Any, prompts: Sequence[Sequence[int]],
             token_budgets: Sequence[int], completion_tokens: int,
             evaluate: Callable[[Any], tuple[float, float]], seed: int = 0,
             steps_per_1k: int = 12, min_steps: int = 60) -> LMClone:
    """Query completions until each budget of completion tokens, retraining a copy of
    ``student`` on everything gathered so far at each budget, and evaluating it."""
    start = time.perf_counter()
    prompt_len = len(prompts[0])
    sequences: list[list[int]] = []
    result = LMClone(student)
    used = 0
    for budget in sorted(token_budgets):
        need = max(0, budget - used) // completion_tokens
        if need:
            new = sample_pairs(oracle, prompts[len(sequences):len(sequences) + need],
                               completion_tokens)
            sequences += new
            used += sum(len(s) - prompt_len for s in new)
        steps = max(min_steps, steps_per_1k * used // 1000)
        model = train_student(copy.deepcopy(student), sequences, prompt_len, steps, seed)
        agreement, kl = evaluate(model)
        result.checkpoints.append(CloneCheckpoint(used, oracle.used, oracle.cost, agreement,
                                                  kl))
        result.student = model
    result.seconds = time.perf_counter() - start
    return result
