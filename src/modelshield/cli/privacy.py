"""``membership``, ``canaries`` and ``prompt-leak``: what a model gives away about its
training data and its system prompt."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelshield.attacks.prompt_extraction import DEFAULT_PROBES, PROBES, PromptExtraction
from modelshield.cli._common import (
    ApiKeyOpt,
    JsonResults,
    Target,
    TokenPrice,
    console,
    progress_bar,
    write_json,
)
from modelshield.cli.render import canary_table, membership_table, probes_table
from modelshield.defenses.policies import parse_policy
from modelshield.errors import ConfigError
from modelshield.victims.zoo import load_victim

if TYPE_CHECKING:
    from modelshield.attacks.prompt_extraction import PromptLeak
    from modelshield.audit.membership_run import MembershipSpec, OracleFactory
    from modelshield.oracle.chat import ChatOracle
    from modelshield.oracle.lm import LMOracle
    from modelshield.victims.base import MembershipTask, Victim
    from modelshield.victims.lm import LMVictim

# membership's options
MembershipAttacks = Annotated[list[str] | None, typer.Option(
    "--attack", help="Membership attack (repeatable; see `modelshield attacks`). Default: "
                     "loss, lira, rmia and label-only. Write lira:online=false,"
                     "fixed_variance=true for a variant.")]
MembershipVictim = Annotated[str | None, typer.Option(
    help="Built-in victim; its members are its training rows. tabular-mlp and "
         "digits-mlp-overfit memorize; tabular-mlp-dp1/4/8 are trained with DP-SGD.")]
OwnModel = Annotated[Path | None, typer.Option(
    help="Your own model (.joblib, .pt, .onnx); with --data.")]
Members = Annotated[Path | None, typer.Option(
    help="With --model-file: an .npz of members, member_labels, non_members, "
         "non_member_labels and optionally population, population_labels (the "
         "attacker's labelled rows for shadow models).")]
Recipe = Annotated[str | None, typer.Option(
    help="How the model was trained, for the shadow models, e.g. "
         "'mlp:hidden=256-256,epochs=100' or 'forest:n_estimators=100' (built-in "
         "victims know theirs).")]
TrainSize = Annotated[int | None, typer.Option(
    min=1, help="Rows each shadow model trains on: the victim's training-set size "
                "(default: the number of members).")]
Shadows = Annotated[int, typer.Option(min=2, help="Shadow models to train.")]
ServedModel = Annotated[str | None, typer.Option(
    help="With --target: the served model's name (when the gateway serves several).")]
MembershipPolicy = Annotated[str, typer.Option(
    help="Output policy in-process, e.g. full, round:2, top-k:1, label.")]
MembershipSeed = Annotated[int, typer.Option(help="Seed for the split, the shadows and attacks.")]
Workers = Annotated[int, typer.Option(min=1, help="Processes training shadows.")]
QueryPrice = Annotated[float, typer.Option(min=0.0, help="Dollars per 1,000 queries.")]
Roc = Annotated[Path | None, typer.Option(
    help="Save the log-log ROC of the attacks here (.png or .svg).")]


def membership(attack: MembershipAttacks = None, victim: MembershipVictim = None,
               model_file: OwnModel = None, data: Members = None, recipe: Recipe = None,
               train_size: TrainSize = None, shadows: Shadows = 16, target: Target = None,
               api_key: ApiKeyOpt = None, model: ServedModel = None,
               policy: MembershipPolicy = "full", seed: MembershipSeed = 0,
               workers: Workers = 1, price: QueryPrice = 1.0, json_out: JsonResults = None,
               roc: Roc = None) -> None:
    """Membership inference: which of the candidate rows were in the model's training data.

    Scores each attack by its true-positive rate at 0.1% and 0.001% false positives (the
    members it finds while almost never accusing a non-member) and its AUC. Shadow models
    follow the victim's training recipe: the attacker knows how, not on what, it was trained.
    """
    from modelshield.audit.membership_run import DEFAULT_ATTACKS, parse_membership_attacks

    specs = parse_membership_attacks(attack or DEFAULT_ATTACKS)
    _check_membership(victim, model_file, data, roc)
    parse_policy(policy)
    v, task = _membership_task(victim, model_file, data, model, recipe, seed)
    oracle_for = _membership_oracles(v, target, api_key, model, policy, price, victim)
    rows = _run_membership(task, oracle_for, specs, v.spec.n_classes, shadows,
                           dict(recipe=recipe, train_size=train_size, workers=workers,
                                seed=seed, price=price))
    where = target or f"{v.name} behind {policy}"
    console.print(membership_table(rows, f"membership inference: {where} ({len(task.members)} "
                                   f"members, {len(task.non_members)} non-members)"))
    console.print(f"With {len(task.non_members)} non-members the smallest false-positive rate "
                  f"one can tell is {1 / len(task.non_members):.2%}; below it a TPR is the "
                  "share found with no false positive at all.", highlight=False)
    if json_out:
        write_json(json_out, {"victim": v.name, "target": target, "policy": policy,
                              "seed": seed, "shadows": shadows, "results": rows}, default=str)
    if roc:
        from modelshield.audit.privacy import roc_figure

        roc_figure(rows, f"membership inference: {v.name}").savefig(roc)
        console.print(f"wrote {roc}")


def _check_membership(victim: str | None, model_file: Path | None, data: Path | None,
                      roc: Path | None) -> None:
    if (victim is None) == (model_file is None):
        raise ConfigError("Give --victim (built-in) or --model-file with --data (yours).")
    if (model_file is None) != (data is None):
        raise ConfigError("--model-file and --data go together: your model and its members.")
    if roc is not None and roc.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ConfigError.invalid("--roc", "a .png, .svg or .pdf file", str(roc))


def _membership_task(victim: str | None, model_file: Path | None, data: Path | None,
                     model: str | None, recipe: str | None, seed: int
                     ) -> tuple[Victim, MembershipTask]:
    """The model and its members: the owner's files, or a built-in victim's split."""
    if model_file is not None and data is not None:
        from modelshield.victims.loaders import membership_from_files

        return membership_from_files(model_file, data, model, recipe or "")
    from modelshield.victims.zoo import membership_task

    assert victim is not None
    return load_victim(victim, seed=seed), membership_task(victim, seed=seed)


def _membership_oracles(v: Victim, target: str | None, api_key: str | None,
                        model: str | None, policy: str, price: float, victim: str | None
                        ) -> OracleFactory:
    """A fresh oracle per attack: in-process, or over HTTP."""
    from modelshield.audit.membership_run import http_oracles, local_oracles

    if target is None:
        return local_oracles(v, policy, price)
    if not api_key:
        raise ConfigError("--target needs --api-key.")
    return http_oracles(v, target, api_key, model=model, price=price, victim_name=victim)


def _run_membership(task: MembershipTask, oracle_for: OracleFactory,
                    specs: list[MembershipSpec], n_classes: int, shadows: int,
                    options: dict[str, Any]) -> list[dict[str, Any]]:
    """Every attack's row (labelled as asked for), with a bar while shadows train."""
    from modelshield.audit.privacy import run_privacy

    with progress_bar() as bar:
        needs = any(s.uses_shadows for s in specs)
        job = bar.add_task(f"training {shadows} shadow models", total=shadows if needs else 0)
        rows = run_privacy(task, oracle_for, [(s.name, s.params) for s in specs],
                           n_classes=n_classes, shadows=shadows,
                           on_shadow=lambda k: bar.update(job, completed=k), **options)
    for row, spec in zip(rows, specs, strict=True):
        row["attack"] = spec.label
    return rows


CanaryVictim = Annotated[str, typer.Option(
    help="The language model whose canaries are tested (lm-canary); with --target, the "
         "model the target serves, whose canaries are the truth.")]
LMTarget = Annotated[str | None, typer.Option(
    help="An OpenAI-compatible endpoint (our gateway, vLLM) serving the model.")]
References = Annotated[int, typer.Option(
    min=10, help="Random candidates each canary is ranked among.")]
CanarySeed = Annotated[int, typer.Option(help="The model's seed (its canaries).")]


def canaries(victim: CanaryVictim = "lm-canary", target: LMTarget = None,
             api_key: ApiKeyOpt = None, references: References = 1000, seed: CanarySeed = 0,
             price: TokenPrice = 0.0, json_out: JsonResults = None) -> None:
    """Secret canaries in a language model's training text (Carlini et al. 2019): the
    exposure of each, in bits, and whether greedy decoding or beam search recovers it.

    Exposure needs logprobs (as many top logprobs as the API gives: read off its refusals);
    without them only greedy extraction runs. In-process the model is served with every
    logprob; against --target, with what its tier lets out.
    """
    from modelshield.audit.canary_run import run_canaries, secret_bits
    from modelshield.victims.lm import CANARY_ALPHABET, LM_ZOO, load_lm
    from modelshield.victims.lm import canaries as canaries_of

    if not LM_ZOO[victim].canaries:
        raise ConfigError(f"--victim {victim!r} carries no canaries; the models with canaries "
                          f"are: {', '.join(n for n in LM_ZOO if LM_ZOO[n].canaries)}.")
    with console.status(f"loading {victim} …"):
        lm = load_lm(victim, seed)
    marks = canaries_of(seed)
    with _canary_oracle(victim, lm, target, api_key, seed, price) as oracle, \
            progress_bar() as bar:
        job = bar.add_task("canaries", total=len(marks))
        run = run_canaries(oracle, lm, marks, references=references, seed=seed,
                           on_canary=lambda: bar.advance(job))
    k = run.top_logprobs
    console.print(canary_table(run, f"canaries of {victim} ({'top ' + str(k) if k else 'no'} "
                               f"logprobs; {len(CANARY_ALPHABET)}^"
                               f"{len(marks[0].secret.split())} candidates, "
                               f"log2 = {secret_bits(marks):.1f} bits)", references))
    if json_out:
        write_json(json_out, {"victim": victim, "target": target, "seed": seed,
                              "top_logprobs": k, "canaries": [r.to_json() for r in run.rows]})


@contextmanager
def _canary_oracle(victim: str, lm: LMVictim, target: str | None, api_key: str | None,
                   seed: int, price: float) -> Iterator[LMOracle]:
    """The model over ``target``'s API (checked to be the same model), or in-process with
    every logprob; closed on exit."""
    from modelshield.oracle.lm import OpenAIOracle, ShieldLMOracle
    from modelshield.serve.local import ALL_LOGPROBS, local_shield

    with ExitStack() as stack:
        oracle: LMOracle
        if target is not None:
            if not api_key:
                raise ConfigError("--target needs --api-key.")
            oracle = OpenAIOracle(target, api_key, price_per_1k_tokens=price)
            if oracle.vocab != lm.vocab:
                oracle.close()
                raise ConfigError(f"{victim} has a vocabulary of {lm.vocab:,}; the target's "
                                  f"has {oracle.vocab:,}: it is not the model the target serves.")
        else:
            shield, key = stack.enter_context(local_shield({"lm": victim, "seed": seed},
                                                           ALL_LOGPROBS))
            oracle = ShieldLMOracle(shield, key, price_per_1k_tokens=price)
        try:
            yield oracle
        finally:
            oracle.close()


ChatTarget = Annotated[str | None, typer.Option(
    help="An OpenAI-compatible chat endpoint (our gateway, vLLM, a vendor) to probe.")]
ChatKeys = Annotated[list[str] | None, typer.Option(
    help="API key for --target; give it several times to spread the requests over "
         "several accounts (a cumulative leak filter counts per account).")]
ChatModel = Annotated[str | None, typer.Option(
    help="The model's name at --target (needed when it serves more than one).")]
ChatVictim = Annotated[str, typer.Option(help="In-process (no --target): the chat model to serve.")]
SystemPrompt = Annotated[str | None, typer.Option(
    help="In-process: the secret system prompt to serve (default: the first of the "
         "benchmark's secret prompts).")]
LeakFilter = Annotated[float | None, typer.Option(
    min=0.01, max=1.0, help="In-process: serve with the leak filter at this threshold "
                            "(share of the prompt's n-grams).")]
PerAnswer = Annotated[bool, typer.Option(
    "--per-answer", help="In-process: the filter judges each answer alone (default: "
                         "what the account received together).")]
Truth = Annotated[Path | None, typer.Option(
    help="A file holding the true system prompt (the owner's), to score the recovery "
         "against. In-process the served prompt is the truth.")]
Probes = Annotated[list[str] | None, typer.Option(
    "--probe", help=f"A probe to send (repeatable; default: all): {', '.join(PROBES)}.")]
MaxTokens = Annotated[int, typer.Option(min=1, max=4096, help="Tokens per reply.")]
Requests = Annotated[int | None, typer.Option(min=1, help="Most requests to send.")]


@dataclasses.dataclass(frozen=True)
class _Chat:
    """Where prompt-leak's requests go: a target's keys, or an in-process model."""

    target: str | None
    keys: list[str] | None
    model: str | None
    victim: str
    system_prompt: str | None
    llm: dict[str, Any]
    budget: int | None
    price: float


def prompt_leak(target: ChatTarget = None, api_key: ChatKeys = None, model: ChatModel = None,
                victim: ChatVictim = "chat-assistant", system_prompt: SystemPrompt = None,
                leak_filter: LeakFilter = None, per_answer: PerAnswer = False,
                truth: Truth = None, probe: Probes = None, max_tokens: MaxTokens = 200,
                budget: Requests = None, price: TokenPrice = 0.0,
                json_out: JsonResults = None) -> None:
    """Try to extract a chat assistant's system prompt through its chat API (Zhang et al.,
    COLM 2024), and score the recovery when the true prompt is known.

    Probes: repeat, instructions, ignore, all-sentences (whole-prompt requests), caps and
    lines (encodings a filter may miss), sentences (a sentence at a time). The guess is the
    reply that agrees most with the others. Exact recovery: the same words in order;
    approximate: ROUGE-L recall >= 0.9.
    """
    attack = PromptExtraction(tuple(probe) if probe else DEFAULT_PROBES, max_tokens)
    truth_text = _read_truth(truth)
    llm: dict[str, Any] = {} if leak_filter is None else {
        "leak_filter": {"threshold": leak_filter, "cumulative": not per_answer}}
    chat = _Chat(target, api_key, model, victim, system_prompt, llm, budget, price)
    with _chat_oracles(chat) as (oracles, served):
        with console.status(f"{attack.queries()} requests at most …"):
            leak = attack.run(oracles)
    if served is not None:
        truth_text = truth_text or served
    if truth_text is not None:
        leak.score(truth_text)
    _print_leak(leak, attack.probes)
    if json_out:
        write_json(json_out, _leak_json(leak, target, model))


def _read_truth(truth: Path | None) -> str | None:
    if truth is None:
        return None
    try:
        return truth.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"--truth: cannot read {str(truth)!r} ({exc.strerror}).") from None


@contextmanager
def _chat_oracles(chat: _Chat) -> Iterator[tuple[list[ChatOracle], str | None]]:
    """One oracle per key (in-process: as many as keys given, at least one), and the
    system prompt served in-process (None over HTTP); closed on exit."""
    with ExitStack() as stack:
        served: str | None = None
        if chat.target is not None:
            oracles = _remote_chats(chat)
        else:
            from modelshield.oracle.chat import ShieldChatOracle
            from modelshield.serve.local import local_shield
            from modelshield.victims.chat import secret_prompts

            served = chat.system_prompt or secret_prompts(1)[0]
            with console.status(f"loading {chat.victim} …"):
                shield, key = stack.enter_context(local_shield(
                    {"builtin": None, "lm": chat.victim, "system_prompt": served}, chat.llm))
            oracles = [ShieldChatOracle(shield, key, budget=chat.budget,
                                        price_per_1k_tokens=chat.price)
                       for _ in range(len(chat.keys or [None]))]
        try:
            yield oracles, served
        finally:
            for o in oracles:
                o.close()


def _remote_chats(chat: _Chat) -> list[ChatOracle]:
    """One oracle per key on the target, the requests shared among them."""
    from modelshield.oracle.chat import OpenAIChatOracle

    if not chat.keys:
        raise ConfigError("--target needs --api-key.")
    if chat.system_prompt is not None or chat.llm:
        raise ConfigError("--system-prompt and --leak-filter set up an in-process "
                          "model; against --target the gateway's config holds them.")
    assert chat.target is not None
    share = None if chat.budget is None else -(-chat.budget // len(chat.keys))
    return [OpenAIChatOracle(chat.target, k, model=chat.model, budget=share,
                             price_per_1k_tokens=chat.price) for k in chat.keys]


def _print_leak(leak: PromptLeak, probes: tuple[str, ...]) -> None:
    console.print(probes_table(leak, probes))
    console.print(f"[bold]guess[/bold] ({leak.queries} requests, ${leak.cost:.4f}):")
    console.print(leak.guess or "(nothing came back)", markup=False)
    if leak.recovery is not None:
        console.print(f"recovery: exact {'yes' if leak.recovery.exact else 'no'}, ROUGE-L "
                      f"recall {leak.recovery.rouge_l:.2f} (approximate: "
                      f"{'yes' if leak.recovery.approximate else 'no'})")


def _leak_json(leak: PromptLeak, target: str | None, model: str | None) -> dict[str, Any]:
    return {"target": target, "model": model, "queries": leak.queries, "cost": leak.cost,
            "guess": leak.guess, "candidates": leak.candidates, "redacted": leak.redacted,
            "refused": leak.refused,
            "recovery": None if leak.recovery is None else dataclasses.asdict(leak.recovery),
            "per_probe": {k: dataclasses.asdict(v) for k, v in leak.per_probe.items()}}
