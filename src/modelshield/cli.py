"""The ``modelshield`` command.

Every error modelshield raises on purpose is printed as one line and ends the command with
its ``exit_code`` (2 for a wrong name or value), never with a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelshield.attacks import ATTACKS
from modelshield.attacks.params import parse_params
from modelshield.attacks.prompt_extraction import DEFAULT_PROBES, PROBES, PromptExtraction
from modelshield.audit.evaluate import Result, run_cell
from modelshield.defenses.policies import POLICIES, parse_policy
from modelshield.defenses.watermark import MAX_CONTROL
from modelshield.errors import ConfigError, ModelShieldError
from modelshield.victims.zoo import ZOO, load_victim

app = typer.Typer(
    help="Measure and defend a served model's exposure to model extraction.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
# Wide tables in logs and pipes; the terminal's own width when there is one.
console = Console(width=None if sys.stdout.isatty() else 150)
err = Console(stderr=True, soft_wrap=True)  # one line per error, paths unbroken


def main() -> None:
    """Entry point: run the app, turning modelshield errors into one-line messages."""
    try:
        app()
    except ModelShieldError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)


@app.command()
def victims() -> None:
    """List the built-in victims."""
    from modelshield.victims.lm import LM_ZOO

    table = Table("name", "model", "watermark", title="built-in victims")
    for name, entry in ZOO.items():
        table.add_row(name, entry.summary, entry.watermark or "-")
    for name, lm in LM_ZOO.items():
        table.add_row(name, lm.summary, "-")
    console.print(table)
    console.print("A trigger-set victim answers its keyed trigger inputs with keyed labels; "
                  "an entangled one (EWE) answers source-class rows with a keyed trigger "
                  "stamped on with its target class, and its clones tend to as well "
                  "(`modelshield verify --trigger-set NAME`). Any victim can be served with "
                  "a serve-time watermark (a tier's `watermark:`).", highlight=False)


@app.command()
def attacks() -> None:
    """List the attacks, what they need from the answers, and their parameters."""
    table = Table("name", "what it does", "needs", "parameters", title="attacks")
    for name, cls in ATTACKS.items():
        params = ", ".join(cls.parameters())
        table.add_row(name, cls.summary(), cls.needs, params)
    from modelshield.attacks.logit_stealing import LM_ATTACKS

    for name, lm_cls in LM_ATTACKS.items():
        params = ", ".join(f.name for f in dataclasses.fields(lm_cls) if f.name != "random_state")
        table.add_row(name, lm_cls.summary(), lm_cls.needs, params)
    console.print(table)
    from modelshield.attacks.membership import MEMBERSHIP

    privacy = Table("name", "what it does", "needs", "parameters", "source",
                    title="privacy attacks (modelshield membership)")
    for name, m_cls in MEMBERSHIP.items():
        needs = m_cls.needs + (", the attacker's labelled data and the training recipe "
                               "(shadow models)" if m_cls.uses_shadows else "")
        privacy.add_row(name, m_cls.summary(), needs, ", ".join(m_cls.parameters()), m_cls.paper)
    for name, what, needs, params, paper in LM_PRIVACY:
        privacy.add_row(name, what, needs, params, paper)
    console.print(privacy)


LM_PRIVACY = [  # modelshield.attacks.lm_privacy, run by `modelshield canaries`
    ("canary-exposure", "rank of a secret among random candidates of its format, in bits",
     "top logprobs (as many as the tier gives)", "references", "Carlini et al., USENIX Sec. 2019"),
    ("canary-extraction", "the secret after its prefix: greedy decoding, or beam search",
     "text (greedy); top logprobs (beam)", "method, width", "Carlini et al. 2019"),
    ("min-k", "membership of a text: its k% least likely tokens", "top logprobs", "fraction",
     "Shi et al., ICLR 2024"),
    ("prompt-leak", "a chat assistant's system prompt, by repeat requests, encodings and a "
     "sentence at a time (modelshield prompt-leak)", "text replies (any chat API)",
     "probes, max_tokens", "Zhang et al., COLM 2024"),
]


@app.command()
def policies() -> None:
    """List the output policies and what they promise honest users."""
    table = Table("name", "what leaves the API", "scores rank top-1 first", title="output policies")
    for name, cls in POLICIES.items():
        table.add_row(name, cls.summary, "yes" if cls.keeps_top1 else "not guaranteed")
    console.print(table)


@app.command()
def attack(
    attack: Annotated[str, typer.Option("--attack", help="Attack (see `modelshield attacks`).")],
    victim: Annotated[str | None, typer.Option(
        help="Built-in victim (see `modelshield victims`); with --target, the model the "
             "gateway serves, used to score the clone and as the attacker's pool.")] = None,
    target: Annotated[str | None, typer.Option(
        help="URL of a running gateway to attack over HTTP instead of in-process.")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key for --target.")] = None,
    policy: Annotated[str, typer.Option(
        help="Output policy, e.g. full, round:2, top-k:3, label (in-process; a gateway "
             "applies the key's tier instead).")] = "full",
    budget: Annotated[int, typer.Option(min=1, help="Most queries the attacker may send.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed for the victim's split and the attack.")] = 0,
    price: Annotated[float, typer.Option(
        min=0.0, help="Dollars per 1,000 queries (per 1,000 tokens for language models).")]
    = 1.0,
    param: Annotated[list[str] | None, typer.Option(
        help="Attack parameter as key=value (repeatable), e.g. --param method=adaptive.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")] = None,
    model: Annotated[str | None, typer.Option(
        help="With --target: the model to attack, by the name the gateway serves it under "
             "(needed when it serves several).")] = None,
    model_file: Annotated[Path | None, typer.Option(
        help="Your own model (.joblib, .pt, .onnx), to score the clone against; with --data.")]
    = None,
    data: Annotated[Path | None, typer.Option(
        help="Your data: an .npz with X_test, y_test and optionally pool (the attacker's "
             "natural rows), low and high (the domain); or a .csv of test rows with a "
             "'label' column.")] = None,
    save_clone: Annotated[Path | None, typer.Option(
        help="Save the clone here (joblib), to verify or compare it later; for "
             "llm-projection, the recovered W (NumPy .npy).")] = None,
    pace: Annotated[float | None, typer.Option(
        min=0.001, help="With --target: wait out each rate limit (HTTP 429) whose "
                        "Retry-After is at most this many seconds, and go on (low and "
                        "slow); without it the attack stops at the first refusal.")] = None,
) -> None:
    """Run one attack against a built-in victim behind an output policy, or a gateway.

    To score an attack on your own model served by a gateway, give the gateway (--target,
    --api-key, --model) and your model file and data (--model-file, --data).

    Language-model attacks (llm-*) run against an OpenAI-compatible --target, or in-process
    against a built-in language model (--victim lm-h64, ...) that lets every logprob out.
    With --target, --victim lm-NAME or --model-file DIR (your saved model) is the reference
    the recovered hidden size and W are checked against.
    """
    from modelshield.attacks.logit_stealing import LM_ATTACKS

    if attack in LM_ATTACKS:
        _lm_attack(attack, victim, target, api_key, budget, seed, price, param or [], json_out,
                   model_file, save_clone)
        return
    if attack not in ATTACKS:
        raise ConfigError(f"Unknown attack {attack!r}. Choose one of: "
                          f"{', '.join([*ATTACKS, *LM_ATTACKS])}.")
    cls = ATTACKS[attack]
    parse_policy(policy)  # fail on a bad policy before training anything
    params = parse_params(cls, param or [])
    if target is None and victim is None and model_file is None:
        raise ConfigError("Give --victim or --model-file with --data (in-process), or "
                          "--target URL --api-key KEY.")
    if victim and model_file:
        raise ConfigError("Give --victim (a built-in model) or --model-file (yours), not both.")
    if (model_file is None) != (data is None):
        raise ConfigError("--model-file and --data go together: your model and its data.")
    if pace is not None and target is None:
        raise ConfigError("--pace waits out a gateway's rate limits: it goes with --target.")
    v = _owner_victim(model_file, data, model) if model_file and data else \
        load_victim(victim, seed=seed) if victim else None
    if target is not None:
        if not api_key:
            raise ConfigError("--target needs --api-key.")
        from modelshield.oracle import HttpOracle

        with console.status(f"{attack} on {target} …"), \
                contextlib.closing(HttpOracle(target, api_key, price_per_1k=price,
                                              model=model, pace=pace)) as oracle:
            if v is not None and v.spec.name != oracle.model and model_file is None:
                raise ConfigError(f"--victim {victim!r} is not the model the target serves "
                                  f"({oracle.model!r}): the fidelity would be against the "
                                  "wrong model. Name the served one, or score your own with "
                                  "--model-file and --data.")
            if v is not None and v.spec.n_features != oracle.spec.n_features:
                raise ConfigError(f"The scoring model takes {v.spec.n_features} features; "
                                  f"the target's {oracle.model!r} takes "
                                  f"{oracle.spec.n_features}.")
            result = run_cell(v, attack, policy, budget, seed, price, params, oracle=oracle)
            if oracle.waited:
                console.print(f"waited out rate limits for {oracle.waited:.1f} s")
    else:
        assert v is not None
        with console.status(f"{attack} on {victim} behind {policy} …"):
            result = run_cell(v, attack, policy, budget, seed, price, params)
    console.print(results_table([result]))
    if json_out:
        json_out.write_text(json.dumps(result.to_dict(), indent=2))
        console.print(f"wrote {json_out}")
    if save_clone is not None:
        if result.clone is None:
            err.print("no clone to save: the attack built none (see the status)")
        else:
            import joblib

            joblib.dump(result.clone, save_clone)
            console.print(f"wrote the clone to {save_clone}")
    if result.status != "ok":
        raise typer.Exit(3)


MEMBERSHIP_DEFAULT = ["loss", "lira", "rmia", "label-only"]


@app.command()
def membership(
    attack: Annotated[list[str] | None, typer.Option(
        "--attack", help="Membership attack (repeatable; see `modelshield attacks`). Default: "
                         "loss, lira, rmia and label-only. Write lira:online=false,"
                         "fixed_variance=true for a variant.")] = None,
    victim: Annotated[str | None, typer.Option(
        help="Built-in victim; its members are its training rows. tabular-mlp and "
             "digits-mlp-overfit memorize; tabular-mlp-dp1/4/8 are trained with DP-SGD.")]
    = None,
    model_file: Annotated[Path | None, typer.Option(
        help="Your own model (.joblib, .pt, .onnx); with --data.")] = None,
    data: Annotated[Path | None, typer.Option(
        help="With --model-file: an .npz of members, member_labels, non_members, "
             "non_member_labels and optionally population, population_labels (the "
             "attacker's labelled rows for shadow models).")] = None,
    recipe: Annotated[str | None, typer.Option(
        help="How the model was trained, for the shadow models, e.g. "
             "'mlp:hidden=256-256,epochs=100' or 'forest:n_estimators=100' (built-in "
             "victims know theirs).")] = None,
    train_size: Annotated[int | None, typer.Option(
        min=1, help="Rows each shadow model trains on: the victim's training-set size "
                    "(default: the number of members).")] = None,
    shadows: Annotated[int, typer.Option(min=2, help="Shadow models to train.")] = 16,
    target: Annotated[str | None, typer.Option(
        help="URL of a running gateway to attack over HTTP instead of in-process.")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key for --target.")] = None,
    model: Annotated[str | None, typer.Option(
        help="With --target: the served model's name (when the gateway serves several).")]
    = None,
    policy: Annotated[str, typer.Option(
        help="Output policy in-process, e.g. full, round:2, top-k:1, label.")] = "full",
    seed: Annotated[int, typer.Option(help="Seed for the split, the shadows and attacks.")] = 0,
    workers: Annotated[int, typer.Option(min=1, help="Processes training shadows.")] = 1,
    price: Annotated[float, typer.Option(min=0.0, help="Dollars per 1,000 queries.")] = 1.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")]
    = None,
    roc: Annotated[Path | None, typer.Option(
        help="Save the log-log ROC of the attacks here (.png or .svg).")] = None,
) -> None:
    """Membership inference: which of the candidate rows were in the model's training data.

    Scores each attack by its true-positive rate at 0.1% and 0.001% false positives (the
    members it finds while almost never accusing a non-member) and its AUC. Shadow models
    follow the victim's training recipe: the attacker knows how, not on what, it was trained.
    """
    from modelshield.attacks.membership import MEMBERSHIP
    from modelshield.audit.privacy import roc_figure, run_privacy

    specs = []
    for item in attack or MEMBERSHIP_DEFAULT:
        name, _, rest = item.partition(":")
        if name not in MEMBERSHIP:
            raise ConfigError(f"Unknown membership attack {name!r}. Choose one of: "
                              f"{', '.join(MEMBERSHIP)}.")
        params = parse_params(MEMBERSHIP[name], [p for p in rest.split(",") if p],
                              where="--attack")
        MEMBERSHIP[name](**params)  # a bad value fails now, before any training
        specs.append((item, name, params))
    if (victim is None) == (model_file is None):
        raise ConfigError("Give --victim (built-in) or --model-file with --data (yours).")
    if (model_file is None) != (data is None):
        raise ConfigError("--model-file and --data go together: your model and its members.")
    if roc is not None and roc.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ConfigError.invalid("--roc", "a .png, .svg or .pdf file", str(roc))
    parse_policy(policy)
    if model_file is not None and data is not None:
        from modelshield.victims.loaders import membership_from_files

        v, task = membership_from_files(model_file, data, model, recipe or "")
    else:
        from modelshield.victims.zoo import membership_task

        assert victim is not None
        v, task = load_victim(victim, seed=seed), membership_task(victim, seed=seed)
    oracle_for = _membership_oracles(v, target, api_key, model, policy, price, victim)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        needs = any(MEMBERSHIP[n].uses_shadows for _, n, _ in specs)
        job = bar.add_task(f"training {shadows} shadow models", total=shadows if needs else 0)
        rows = run_privacy(task, oracle_for, [(n, p) for _, n, p in specs],
                           n_classes=v.spec.n_classes, shadows=shadows, recipe=recipe,
                           train_size=train_size, workers=workers, seed=seed, price=price,
                           on_shadow=lambda k: bar.update(job, completed=k))
    for row, (label, _, _) in zip(rows, specs, strict=True):
        row["attack"] = label
    where = target or f"{v.name} behind {policy}"
    table = Table("attack", "needs", "TPR@1%", "TPR@0.1%", "TPR@0.001%", "AUC", "queries", "$",
                  "seconds", title=f"membership inference: {where} ({len(task.members)} "
                  f"members, {len(task.non_members)} non-members)")
    for row in rows:
        if row["status"] != "ok":
            table.add_row(row["attack"], row["needs"], f"{row['status']}: {row['reason']}", "",
                          "", "", str(row.get("queries", 0)), "", "")
            continue
        t = row["tpr"]
        table.add_row(row["attack"], row["needs"], f"{t['1%']:.3f}", f"{t['0.1%']:.3f}",
                      f"{t['0.001%']:.3f}", f"{row['auc']:.3f}", str(row["queries"]),
                      f"{row['cost']:.2f}", f"{row['seconds']:.1f}")
    console.print(table)
    console.print(f"With {len(task.non_members)} non-members the smallest false-positive rate "
                  f"one can tell is {1 / len(task.non_members):.2%}; below it a TPR is the "
                  "share found with no false positive at all.", highlight=False)
    if json_out:
        json_out.write_text(json.dumps({"victim": v.name, "target": target, "policy": policy,
                                        "seed": seed, "shadows": shadows, "results": rows},
                                       indent=2, default=str))
        console.print(f"wrote {json_out}")
    if roc:
        roc_figure(rows, f"membership inference: {v.name}").savefig(roc)
        console.print(f"wrote {roc}")


@app.command()
def canaries(
    victim: Annotated[str, typer.Option(
        help="The language model whose canaries are tested (lm-canary); with --target, the "
             "model the target serves, whose canaries are the truth.")] = "lm-canary",
    target: Annotated[str | None, typer.Option(
        help="An OpenAI-compatible endpoint (our gateway, vLLM) serving the model.")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key for --target.")] = None,
    references: Annotated[int, typer.Option(
        min=10, help="Random candidates each canary is ranked among.")] = 1000,
    seed: Annotated[int, typer.Option(help="The model's seed (its canaries).")] = 0,
    price: Annotated[float, typer.Option(min=0.0, help="Dollars per 1,000 tokens.")] = 0.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")]
    = None,
) -> None:
    """Secret canaries in a language model's training text (Carlini et al. 2019): the
    exposure of each, in bits, and whether greedy decoding or beam search recovers it.

    Exposure needs logprobs (as many top logprobs as the API gives: read off its refusals);
    without them only greedy extraction runs. In-process the model is served with every
    logprob; against --target, with what its tier lets out.
    """
    import tempfile

    from modelshield.attacks.lm_privacy import canary_exposure, extract_secret, usable_logprobs
    from modelshield.victims.lm import CANARY_ALPHABET, LM_ZOO, load_lm
    from modelshield.victims.lm import canaries as canaries_of

    if not LM_ZOO[victim].canaries:
        raise ConfigError(f"--victim {victim!r} carries no canaries; the models with canaries "
                          f"are: {', '.join(n for n in LM_ZOO if LM_ZOO[n].canaries)}.")
    with tempfile.TemporaryDirectory() as tmp:
        with console.status(f"loading {victim} …"):
            lm = load_lm(victim, seed)
        oracle: Any
        shield: Any = None
        if target is not None:
            if not api_key:
                raise ConfigError("--target needs --api-key.")
            from modelshield.oracle.lm import OpenAIOracle

            oracle = OpenAIOracle(target, api_key, price_per_1k_tokens=price)
            if oracle.vocab != lm.vocab:
                oracle.close()
                raise ConfigError(f"{victim} has a vocabulary of {lm.vocab:,}; the target's "
                                  f"has {oracle.vocab:,}: it is not the model the target serves.")
        else:
            from modelshield.oracle.lm import ShieldLMOracle
            from modelshield.serve.factory import build_shield

            shield = build_shield({"model": {"lm": victim, "seed": seed},
                                   "audit_url": f"sqlite:///{tmp}/audit.db",
                                   "tiers": {"open": {"llm": {"max_top_logprobs": 1 << 20}}}})
            oracle = ShieldLMOracle(shield, shield.store.create_key("open")[0],
                                    price_per_1k_tokens=price)
        letters = [lm.encode(" " + a)[0] for a in CANARY_ALPHABET]
        marks = canaries_of(seed)
        rows = []
        try:
            k = usable_logprobs(oracle, lm.vocab, lm.encode(marks[0].prefix))
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=console, transient=True) as bar:
                job = bar.add_task("canaries", total=len(marks))
                for c in marks:
                    prefix = lm.encode(c.prefix)
                    secret = [letters[CANARY_ALPHABET.index(x)] for x in c.secret.split()]
                    row: dict[str, Any] = {"prefix": c.prefix, "repeats": c.repeats,
                                           "greedy": extract_secret(oracle, prefix, len(secret),
                                                                    letters) == secret}
                    if k is not None:
                        e = canary_exposure(oracle, prefix, secret, letters,
                                            references=references, k=k, seed=seed)
                        row.update(interpolation=e.interpolation, extrapolation=e.extrapolation,
                                   rank=e.rank, queries=e.queries,
                                   beam=extract_secret(oracle, prefix, len(secret), letters,
                                                       method="beam", k=k) == secret)
                    rows.append(row)
                    bar.advance(job)
        finally:
            oracle.close()
            if shield is not None:
                shield.close()
    table = Table("canary", "inserted", "exposure (interp.)", "exposure (extrap.)",
                  "rank", "greedy", "beam", "queries",
                  title=f"canaries of {victim} ({'top ' + str(k) if k else 'no'} logprobs; "
                        f"{len(CANARY_ALPHABET)}^{len(marks[0].secret.split())} candidates, "
                        f"log2 = {len(marks[0].secret.split()) * np.log2(len(CANARY_ALPHABET)):.1f} bits)")
    for r in rows:
        def bits(x: float | None) -> str:
            return "—" if x is None else f"{x:.1f}"

        table.add_row(r["prefix"], f"{r['repeats']}x", bits(r.get("interpolation")),
                      bits(r.get("extrapolation")),
                      "—" if "rank" not in r else f"{r['rank']} of {references}",
                      "yes" if r["greedy"] else "no",
                      "—" if "beam" not in r else ("yes" if r["beam"] else "no"),
                      f"{r.get('queries', 0):,}")
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps({"victim": victim, "target": target, "seed": seed,
                                        "top_logprobs": k, "canaries": rows}, indent=2))
        console.print(f"wrote {json_out}")


@app.command("prompt-leak")
def prompt_leak(
    target: Annotated[str | None, typer.Option(
        help="An OpenAI-compatible chat endpoint (our gateway, vLLM, a vendor) to probe.")]
    = None,
    api_key: Annotated[list[str] | None, typer.Option(
        help="API key for --target; give it several times to spread the requests over "
             "several accounts (a cumulative leak filter counts per account).")] = None,
    model: Annotated[str | None, typer.Option(
        help="The model's name at --target (needed when it serves more than one).")] = None,
    victim: Annotated[str, typer.Option(
        help="In-process (no --target): the chat model to serve.")] = "chat-assistant",
    system_prompt: Annotated[str | None, typer.Option(
        help="In-process: the secret system prompt to serve (default: the first of the "
             "benchmark's secret prompts).")] = None,
    leak_filter: Annotated[float | None, typer.Option(
        min=0.01, max=1.0, help="In-process: serve with the leak filter at this threshold "
                                "(share of the prompt's n-grams).")] = None,
    per_answer: Annotated[bool, typer.Option(
        "--per-answer", help="In-process: the filter judges each answer alone (default: "
                             "what the account received together).")] = False,
    truth: Annotated[Path | None, typer.Option(
        help="A file holding the true system prompt (the owner's), to score the recovery "
             "against. In-process the served prompt is the truth.")] = None,
    probe: Annotated[list[str] | None, typer.Option(
        "--probe", help=f"A probe to send (repeatable; default: all): "
                        f"{', '.join(PROBES)}.")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, max=4096, help="Tokens per reply.")] = 200,
    budget: Annotated[int | None, typer.Option(min=1, help="Most requests to send.")] = None,
    price: Annotated[float, typer.Option(min=0.0, help="Dollars per 1,000 tokens.")] = 0.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")]
    = None,
) -> None:
    """Try to extract a chat assistant's system prompt through its chat API (Zhang et al.,
    COLM 2024), and score the recovery when the true prompt is known.

    Probes: repeat, instructions, ignore, all-sentences (whole-prompt requests), caps and
    lines (encodings a filter may miss), sentences (a sentence at a time). The guess is the
    reply that agrees most with the others. Exact recovery: the same words in order;
    approximate: ROUGE-L recall >= 0.9.
    """
    import tempfile

    from modelshield.oracle.chat import ChatOracle

    attack = PromptExtraction(tuple(probe) if probe else DEFAULT_PROBES, max_tokens)
    truth_text = None
    if truth is not None:
        try:
            truth_text = truth.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--truth: cannot read {str(truth)!r} ({exc.strerror}).") from None
    oracles: list[ChatOracle] = []
    shield: Any = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            if target is not None:
                if not api_key:
                    raise ConfigError("--target needs --api-key.")
                if system_prompt is not None or leak_filter is not None:
                    raise ConfigError("--system-prompt and --leak-filter set up an in-process "
                                      "model; against --target the gateway's config holds them.")
                from modelshield.oracle.chat import OpenAIChatOracle

                share = None if budget is None else -(-budget // len(api_key))
                oracles = [OpenAIChatOracle(target, k, model=model, budget=share,
                                            price_per_1k_tokens=price) for k in api_key]
            else:
                from modelshield.oracle.chat import ShieldChatOracle
                from modelshield.serve.factory import build_shield
                from modelshield.victims.chat import secret_prompts

                secret = system_prompt or secret_prompts(1)[0]
                truth_text = truth_text or secret
                llm: dict[str, Any] = {} if leak_filter is None else {
                    "leak_filter": {"threshold": leak_filter, "cumulative": not per_answer}}
                with console.status(f"loading {victim} …"):
                    shield = build_shield({"model": {"builtin": None, "lm": victim,
                                                     "system_prompt": secret},
                                           "audit_url": f"sqlite:///{tmp}/audit.db",
                                           "tiers": {"open": {"llm": llm}}})
                oracles = [ShieldChatOracle(shield, shield.store.create_key("open")[0],
                                            budget=budget, price_per_1k_tokens=price)
                           for _ in range(len(api_key or [None]))]
            with console.status(f"{attack.queries()} requests at most …"):
                leak = attack.run(oracles)
        finally:
            for o in oracles:
                o.close()
            if shield is not None:
                shield.close()
    if truth_text is not None:
        leak.score(truth_text)
    table = Table("probe", "requests", "redacted", "refused", "ROUGE-L recall", "exact",
                  title="system-prompt probes")
    for name in attack.probes:
        r = leak.per_probe.get(name)
        table.add_row(name, str(leak.sent.get(name, 0)),
                      str(leak.redacted.get(name, 0)), leak.refused.get(name, ""),
                      "—" if r is None else f"{r.rouge_l:.2f}",
                      "—" if r is None else ("yes" if r.exact else "no"))
    console.print(table)
    console.print(f"[bold]guess[/bold] ({leak.queries} requests, ${leak.cost:.4f}):")
    console.print(leak.guess or "(nothing came back)", markup=False)
    if leak.recovery is not None:
        console.print(f"recovery: exact {'yes' if leak.recovery.exact else 'no'}, ROUGE-L "
                      f"recall {leak.recovery.rouge_l:.2f} (approximate: "
                      f"{'yes' if leak.recovery.approximate else 'no'})")
    if json_out:
        json_out.write_text(json.dumps({
            "target": target, "model": model, "queries": leak.queries, "cost": leak.cost,
            "guess": leak.guess, "candidates": leak.candidates, "redacted": leak.redacted,
            "refused": leak.refused,
            "recovery": None if leak.recovery is None else dataclasses.asdict(leak.recovery),
            "per_probe": {k: dataclasses.asdict(v) for k, v in leak.per_probe.items()}},
            indent=2))
        console.print(f"wrote {json_out}")


def _membership_oracles(v: Any, target: str | None, api_key: str | None, model: str | None,
                        policy: str, price: float, victim: str | None) -> Any:
    """A function that opens a fresh oracle per attack: in-process, or over HTTP."""
    if target is None:
        from modelshield.oracle import LocalOracle

        return lambda need: LocalOracle(v, parse_policy(policy), price_per_1k=price)
    if not api_key:
        raise ConfigError("--target needs --api-key.")
    from modelshield.oracle import HttpOracle

    probe = HttpOracle(target, api_key, price_per_1k=price, model=model)
    probe.close()
    if victim is not None and probe.model != victim:
        raise ConfigError(f"--victim {victim!r} is not the model the target serves "
                          f"({probe.model!r}): membership would be scored against the wrong "
                          "training set.")
    if probe.spec.n_features != v.spec.n_features:
        raise ConfigError(f"The members have {v.spec.n_features} features; the target's "
                          f"{probe.model!r} takes {probe.spec.n_features}.")
    return lambda need: HttpOracle(target, api_key, price_per_1k=price, model=model)


def _owner_victim(model_file: Path, data: Path, name: str | None) -> Any:
    from modelshield.victims.loaders import victim_from_files

    return victim_from_files(model_file, data, name)


def _lm_attack(attack: str, victim: str | None, target: str | None, api_key: str | None,
               budget: int, seed: int, price: float, param: list[str],
               json_out: Path | None, model_dir: Path | None = None,
               save_w: Path | None = None) -> None:
    """A language-model attack. Over HTTP, --victim lm-NAME (or --model-file DIR, the owner's
    saved model) is the reference the recovered hidden size and W are checked against."""
    import tempfile

    from modelshield.attacks.logit_stealing import LM_ATTACKS, alignment_error

    cls = LM_ATTACKS[attack]
    params = parse_params(cls, param)
    shield = None
    reference: Any = None
    with tempfile.TemporaryDirectory() as tmp:
        if target is not None:
            if not api_key:
                raise ConfigError("--target needs --api-key.")
            from modelshield.oracle.lm import OpenAIOracle
            from modelshield.victims.lm import LMVictim, load_lm

            if model_dir is not None:
                reference = LMVictim.from_directory(model_dir)
            elif victim is not None:
                reference = load_lm(victim, seed)
            oracle: Any = OpenAIOracle(target, api_key, price_per_1k_tokens=price)
            if reference is not None and reference.vocab != oracle.vocab:
                oracle.close()
                raise ConfigError(f"The reference model has a vocabulary of {reference.vocab:,}; "
                                  f"the target's has {oracle.vocab:,}: it is not the model the "
                                  "target serves.")
        elif victim is not None:
            from modelshield.oracle.lm import ShieldLMOracle
            from modelshield.serve.factory import build_shield

            with console.status(f"loading {victim} …"):
                shield = build_shield({
                    "model": {"builtin": None, "lm": victim, "seed": seed},
                    "audit_url": f"sqlite:///{tmp}/audit.db",
                    "tiers": {"open": {"llm": {"max_top_logprobs": 1 << 20}}}})
            oracle = ShieldLMOracle(shield, shield.store.create_key("open")[0],
                                    price_per_1k_tokens=price)
        else:
            raise ConfigError("Give --victim lm-NAME (in-process) or --target URL --api-key "
                              "KEY.")
        try:
            with console.status(f"{attack} on {oracle.name} …"):
                e = cls(random_state=seed, **params).run(oracle, budget)
        finally:
            oracle.close()
        table = Table("attack", "variant", "hidden size", "queries", "requests", "tokens", "$",
                      "seconds", title="language-model stealing")
        table.add_row(attack, e.variant, str(e.hidden_size), f"{e.queries:,}",
                      f"{e.requests:,}", f"{e.tokens:,}", f"{e.cost:.2f}", f"{e.seconds:.1f}")
        console.print(table)
        result: dict[str, Any] = {"attack": attack, "variant": e.variant,
                                  "hidden_size": e.hidden_size, "queries": e.queries,
                                  "requests": e.requests, "tokens": e.tokens, "cost": e.cost,
                                  "seconds": e.seconds, "info": e.info}
        if shield is not None:
            reference = shield.lm
            shield.close()
        if reference is not None:
            result["true_hidden_size"] = reference.hidden
            if e.W is not None:
                result["W_error"] = alignment_error(e.W, reference.W)
                console.print("W alignment error against the reference (defender's check): "
                              f"RMS {result['W_error']['rms']:.3g}, relative "
                              f"{result['W_error']['relative_rms']:.3g}")
        if save_w is not None:
            if e.W is None:
                err.print("no W to save: this attack recovers the hidden size only")
            else:
                import numpy as np

                with save_w.open("wb") as fh:  # np.save would add .npy to another suffix
                    np.save(fh, e.W)
                console.print(f"wrote W ({e.W.shape[0]} x {e.W.shape[1]}) to {save_w}")
        for v, why in e.info.get("blocked_variants", {}).items():
            console.print(f"[yellow]{v} blocked:[/] {why}", highlight=False)
        if json_out:
            json_out.write_text(json.dumps(result, indent=2, default=float))
            console.print(f"wrote {json_out}")


WorkersOpt = Annotated[int, typer.Option(min=0, help="Cells run at once (0: one per core).")]


def _run_scenario(scenario: Any, out: Path, workers: int, executor: str = "process",
                  address: str | None = None) -> dict[str, Any]:
    """Run an audit with a progress bar, write results.json, report.html and summary.md."""
    from modelshield.audit.report import write_report
    from modelshield.audit.runner import run_audit

    columns = (TextColumn("{task.description:<52}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("checking the target", total=None)

        def start(total: int, cached: int) -> None:
            progress.update(task, total=total,
                            description=f"{scenario.name[:32]} ({cached} cells cached)")

        def done(cell: dict[str, Any], cached: bool) -> None:
            what = cell.get("attacker") or {"privacy": "membership inference"}.get(
                cell.get("kind", ""), "honest users")
            progress.update(task, advance=1, description=f"{what[:24]} vs {cell['defense'][:20]}")

        doc = run_audit(scenario, out, workers, on_start=start, on_done=done,
                        executor=executor, address=address)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=1))
    paths = write_report(doc, out)
    console.print(audit_table(doc))
    a = doc["analysis"]
    color = {"HIGH": "red", "MEDIUM": "yellow", "LOWER": "green"}[a["rating"]["level"]]
    console.print(f"risk as deployed ({a['rating']['defense']}): "
                  f"[bold {color}]{a['rating']['level']}[/]")
    for fact in a["rating"]["facts"]:
        console.print(f"  - {fact}", highlight=False)
    console.print(f"wrote {out / 'results.json'}, {paths['html']}, {paths['markdown']} "
                  f"({doc['seconds']:.0f} s, {doc['cells_cached']} of {len(doc['cells'])} "
                  "cells from cache)")
    return doc


@app.command()
def audit(
    scenario: Annotated[Path, typer.Argument(help="Scenario file (YAML); "
                                             "`modelshield init --audit` writes an example.")],
    out: Annotated[Path, typer.Option(help="Folder for results.json, report.html, summary.md "
                                      "and the cell cache.")] = Path("results/audit"),
    workers: WorkersOpt = 0,
    fresh: Annotated[bool, typer.Option(help="Ignore cached cells and run everything.")]
    = False,
    executor: Annotated[str, typer.Option(
        help="Where cells run: 'process' (a process pool here) or 'ray' (a Ray cluster; "
             "pip install 'modelshield[ray]').")] = "process",
    address: Annotated[str | None, typer.Option(
        help="With --executor ray: the cluster's address (host:port); none starts a local "
             "Ray instance.")] = None,
) -> None:
    """Measure a model's exposure: every attacker x defense x budget, in parallel.

    Finished cells are cached in OUT/cells by a hash of their configuration, so an
    interrupted audit resumes and an unchanged one takes seconds. With --executor ray the
    cells (and the shadow models of membership inference) run on a Ray cluster; the cache
    and the report stay here.
    """
    if executor not in ("process", "ray"):
        raise ConfigError.invalid("--executor", "'process' or 'ray'", executor)
    if address is not None and executor != "ray":
        raise ConfigError("--address goes with --executor ray.")
    import shutil

    from modelshield.audit.scenario import load_scenario

    s = load_scenario(scenario)
    if fresh:
        shutil.rmtree(out / "cells", ignore_errors=True)
    _run_scenario(s, out, workers, executor, address)


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="results.json written by an audit.")],
    out: Annotated[Path | None, typer.Option(help="Folder for report.html and summary.md "
                                             "(default: beside the results).")] = None,
) -> None:
    """Redraw report.html and summary.md from an audit's results.json."""
    from modelshield.audit.report import load_results, write_report

    doc = load_results(results)
    paths = write_report(doc, out or results.parent)
    console.print(f"wrote {paths['html']} and {paths['markdown']}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the report, results and cache.")]
    = Path("results/demo"),
    workers: WorkersOpt = 0,
) -> None:
    """Audit a built-in scenario: the digits MLP under four defenses, four attackers (one
    of them adaptive: knockoff spread over 10 keys).

    Writes OUT/report.html (open it in a browser), results.json and summary.md.
    """
    from modelshield.audit.scenario import DEMO, load_scenario

    _run_scenario(load_scenario(DEMO), out, workers)


def audit_table(doc: dict[str, Any]) -> Table:
    a = doc["analysis"]
    table = Table("defense", "attacker", "status", "best fid", "queries to 90%", "$ to 90%",
                  "first flagged", title="exposure by defense")
    for d in a["defenses"]:
        for r in d["attackers"]:
            flag = r["first_flag"]
            status = r["status"] if r["status"] == "ok" else f"[yellow]{r['status']}[/]"
            table.add_row(d["name"], r["attacker"], status,
                          "—" if r["best_fidelity"] is None else f"{r['best_fidelity']:.4f}",
                          _q90(r),
                          "—" if r["usd90"] is None else f"${r['usd90']:,.2f}",
                          "never" if flag is None else f"{flag['query']:,} ({flag['detector']})")
    return table


def _q90(r: dict[str, Any]) -> str:
    """Queries to 90%, with the range the test set's size leaves (see the report)."""
    point = "—" if r["q90"] is None else f"{r['q90']:,}"
    span = r.get("q90_range")
    if not span or span == [r["q90"], r["q90"]]:
        return point
    lo, hi = ("—" if v is None else f"{v:,}" for v in span)
    return f"{point} ({lo} to {hi})"


keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
audit_log_app = typer.Typer(help="Inspect the gateway's audit log.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_log_app, name="audit-log")
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Gateway config (YAML).")]


def _load(config: Path | None) -> Any:
    from modelshield.defenses.config import load_config

    return load_config(config)


def _store(config: Path | None) -> Any:
    from modelshield.serve.factory import open_store

    return open_store(_load(config))


@app.command()
def init(path: Annotated[Path | None, typer.Argument(
             help="Where to write it (default: modelshield.yaml, or audit.yaml with --audit).")]
         = None,
         audit: Annotated[bool, typer.Option("--audit", help="Write an example audit scenario "
                                             "instead of a gateway config.")] = False,
         force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False) -> None:
    """Write a commented example gateway config with free / pro / enterprise tiers
    (or, with --audit, an example audit scenario)."""
    from modelshield.audit.scenario import EXAMPLE as SCENARIO
    from modelshield.defenses.config import example_config

    path = path or Path("audit.yaml" if audit else "modelshield.yaml")
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it.")
    path.write_text(SCENARIO if audit else example_config())
    console.print(f"wrote {path}")


@app.command()
def calibrate(config: ConfigOpt = None,
              from_audit_log: Annotated[bool, typer.Option(
                  "--from-audit-log", help="Write calibration data from the rows customers "
                  "sent (the audit log), instead of showing the thresholds.")] = False,
              since: Annotated[str | None, typer.Option(
                  help="With --from-audit-log: from this time (UTC): 2026-11-01, "
                  "2026-11-01T08:00, or 30d (that many days ago).")] = None,
              until: Annotated[str | None, typer.Option(
                  help="With --from-audit-log: up to this time (same forms).")] = None,
              model: Annotated[str | None, typer.Option(
                  "--model", help="The served model's name (default: the config's only "
                  "model).")] = None,
              out: Annotated[Path | None, typer.Option(
                  "--out", help="With --from-audit-log: the .npz to write (array X); name "
                  "it in the config's model.calibration.")] = None,
              check: Annotated[int, typer.Option(
                  "--check", min=0, max=1000, help="Also play this many honest customers "
                  "of each kind (iid, narrow, what-if, batch, repeat, burst) through each "
                  "tier, calibrated on half the data, sending the other half; report the "
                  "share flagged.")] = 0,
              as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
              ) -> None:
    """Show how each tier's detectors are calibrated on the model's calibration data, or
    (--from-audit-log) write that data from past traffic.

    Detectors set their thresholds from the owner's natural data for the tier's fpr (the
    share of honest accounts they may flag). Past traffic is the best such data: it is
    what customers send. Keys that were ever flagged are left out, and each distinct row
    is kept once. The accounts' volumes are printed as well, to set volume's max_rows.
    """
    cfg = _load(config)
    if from_audit_log:
        _calibrate_from_log(cfg, since, until, model, out, as_json)
        return
    if since or until or out:
        raise ConfigError("--since, --until and --out go with --from-audit-log")
    from modelshield.serve.factory import build_gateway

    shields = build_gateway(cfg)
    try:
        rows = []
        for sh in shields:
            if model is not None and sh.spec.name != model:
                continue
            for tier, dets in sh.detectors.items():
                for d in dets:
                    rows.append({"model": sh.spec.name, "tier": tier, "detector": d.name,
                                 "sees": d.sees, "fpr": cfg.all_tiers()[tier].fpr,
                                 **d.calibration()})
    finally:
        for sh in shields:
            sh.close()
    checked = _honest_check(cfg, model, check) if check else {}
    if as_json:
        print(json.dumps({"detectors": rows, "honest_check": checked} if check else rows,
                         default=float))
        return
    for name, tiers in checked.items():
        kinds: dict[str, Any] = next(iter(tiers.values()), {}) if tiers else {}
        t = Table("tier", *kinds, title=f"{name}: honest customers flagged, by kind "
                  "(calibrated on half the data, the other half sent)")
        for tier, by in tiers.items():
            t.add_row(tier, *[f"{v['flagged']} / {v['accounts']}" for v in by.values()])
        console.print(t)
    table = Table("model", "tier", "detector", "counts", "thresholds",
                  title="detector calibration (each tier's fpr shared among its tests)")
    for r in rows:
        detail = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in r.items()
                           if k not in ("model", "tier", "detector", "sees"))
        table.add_row(r["model"], r["tier"], r["detector"], r["sees"], detail)
    console.print(table)


def _honest_check(cfg: Any, only: str | None, accounts: int) -> dict[str, Any]:
    """calibrate --check: each model's tiers against honest customers of every kind."""
    from modelshield.audit.calibration import honest_check
    from modelshield.serve.factory import load_model

    out: dict[str, Any] = {}
    for one in ([cfg.for_model(e) for e in cfg.models] if cfg.models else [cfg]):
        model, spec, rows = load_model(one)
        if only is not None and spec.name != only:
            continue
        if rows is None or spec.n_classes < 1:
            continue
        out[spec.name] = honest_check(one, model, spec, rows, accounts)
    return out


def _when_arg(value: str | None, option: str) -> float | None:
    """A --since/--until value as a Unix time: an ISO date or time (UTC), or 'Nd'."""
    if value is None:
        return None
    import datetime as dt

    if value.endswith("d") and value[:-1].isdigit():
        return time.time() - int(value[:-1]) * 86400
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{option}: {value!r} is not a date such as 2026-11-01, "
                          "2026-11-01T08:00 or 30d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _calibrate_from_log(cfg: Any, since: str | None, until: str | None, model: str | None,
                        out: Path | None, as_json: bool) -> None:
    from modelshield.audit.calibration import traffic_from_log
    from modelshield.serve.factory import open_store

    if out is None:
        raise ConfigError("--out: name the .npz file to write (then set model.calibration "
                          "to it)")
    if out.suffix.lower() != ".npz":
        raise ConfigError(f"--out: {out.name} must end in .npz")
    names = [m.name or (Path(m.file).stem if m.file else None) or
             (None if m.upstream else m.builtin) or "model" for m in (cfg.models or [cfg.model])]
    if model is None:  # named as the gateway names it, without loading the model (its
        # calibration file may be the one this command is about to write)
        if len(names) > 1:
            raise ConfigError(f"--model: the config serves {', '.join(names)}; name one")
        model = names[0]
    start, end = _when_arg(since, "--since"), _when_arg(until, "--until")
    store = open_store(cfg)
    try:
        traffic = traffic_from_log(store, model, start, end)
    finally:
        store.close()
    if len(traffic.rows) == 0:
        raise ConfigError(f"the audit log holds no complete rows sent to {model!r} by "
                          "unflagged keys" + (" in that period" if since or until else ""))
    import numpy as np

    np.savez(out, X=traffic.rows)
    summary = {"model": model, "out": str(out), "rows": len(traffic.rows),
               "records": traffic.records, "skipped_rows": traffic.skipped_rows,
               "flagged_keys_left_out": len(traffic.flagged_keys),
               "volumes": traffic.volumes()}
    if as_json:
        print(json.dumps(summary))
        return
    v = traffic.volumes()
    console.print(f"wrote {out}: {len(traffic.rows)} distinct rows from {traffic.records} "
                  f"requests of {int(v['accounts'])} accounts to {model!r} "
                  f"({traffic.skipped_rows} rows left out: flagged keys "
                  f"({len(traffic.flagged_keys)}) or missing features)")
    console.print(f"rows per account: median {v['median']:.0f}, 99th percentile "
                  f"{v['p99']:.0f}, 99.9th {v['p99.9']:.0f}, max {v['max']:.0f}: "
                  "volume's max_rows above the 99.9th keeps honest accounts clear")
    console.print(f"set model.calibration: {out}")


@app.command()
def serve(config: ConfigOpt = None,
          host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
          workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1
          ) -> None:
    """Serve the model behind the Shield over HTTP (no config: built-in model, memory
    limits, SQLite audit log, localhost)."""
    import os

    cfg = _load(config)  # validate before starting anything
    if config is not None:
        os.environ["MODELSHIELD_CONFIG"] = str(config.resolve())
    else:
        os.environ.pop("MODELSHIELD_CONFIG", None)
    served = ", ".join(m.name or m.lm or m.upstream_model or m.file or m.upstream or m.builtin
                       or "model" for m in (cfg.models or [cfg.model]))
    err.print(f"modelshield gateway: serving {served} on http://{host}:{port} "
              f"({workers} worker{'s' if workers > 1 else ''}; audit log {cfg.audit_url}; "
              f"limits {cfg.storage.limits}; docs at /docs)", highlight=False)
    if not cfg.audit_keys:
        err.print("[yellow]warning[/]: no audit_keys set: the audit log is chained with plain "
                  "SHA-256, so whoever can write its database can rewrite it unseen "
                  "(modelshield audit-log new-key writes a key)", highlight=False)
    # Forwarded headers are trusted only from the config's trusted_proxies (the app
    # applies them), never from uvicorn's default of 127.0.0.1.
    from modelshield.serve.server import run

    run("modelshield.serve.main:app", host=host, port=port, workers=workers)


# verify's and evidence's --controls
Controls = Annotated[int, typer.Option(
    min=1, max=100_000, help="Ask the suspect at most this many of each account's unmarked "
    "cells, drawn at random, as the control the score test (and the two-class test) "
    "compares the watermarked cells with. Fewer cost fewer queries and give less power: "
    "docs/benchmarks.md gives the queries that reached p <= 1e-6 and 2^-64.")]

# verify's and evidence's --jitter
Jitter = Annotated[float, typer.Option(
    min=0.0, max=0.2, help="Ask, instead of each row the account sent, a copy moved by about "
    "this share of each feature's range that stays in the row's watermark cell, so a "
    "suspect that recognises the rows it was trained on finds none of them (0: the rows as "
    "sent). The tests stay exact; docs/ownership.md gives what it costs and what it stops.")]


@app.command()
def verify(
    suspect: Annotated[str, typer.Option(
        help="The suspect model: a file (.joblib, .pt, .onnx; e.g. a clone saved with "
             "`attack --save-clone`) or the URL of an API that serves it.")],
    config: Annotated[Path | None, typer.Option("--config", help="The gateway config whose "
                                                "watermarked tiers answered the accounts.")]
    = None,
    trigger_set: Annotated[str | None, typer.Option(
        help="Also (or only) test a train-time watermark: a trigger set or an entangled "
             "watermark (a file written by TriggerSet.save or EntangledWatermark.save), or a "
             "built-in victim's name (modelshield victims).")] = None,
    account: Annotated[str | None, typer.Option(
        help="Test this key id only (default: every key of a watermarked tier).")] = None,
    protocol: Annotated[str, typer.Option(
        help="With a URL: rest (POST /v1/models/NAME/predict) or v2 (the Open Inference "
             "Protocol).")] = "rest",
    suspect_key: Annotated[str | None, typer.Option(
        envvar="MODELSHIELD_SUSPECT_KEY", help="With a URL: the API key to query it with.")]
    = None,
    suspect_model: Annotated[str | None, typer.Option(
        help="With a URL: the model's name there (when it serves several).")] = None,
    model: Annotated[str | None, typer.Option(
        help="With a config of several models: which one (its name).")] = None,
    alpha: Annotated[float, typer.Option(
        min=1e-12, max=0.5, help="Name an account only at this p-value or below, after "
             "multiplying by the number of accounts tested.")] = 1e-3,
    controls: Controls = MAX_CONTROL,
    jitter: Jitter = 0.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")]
    = None,
) -> None:
    """Test whether a suspect model was built from our watermarked answers, and whose.

    Each account's watermark set is rebuilt from the audit log and watermark_secret; the
    suspect answers those inputs, and an exact test gives the chance that a model built
    without our answers agrees with the watermark that often. It names an account only
    at p <= alpha; otherwise it says there is no evidence, never that the suspect is
    independent.

    With --trigger-set, the suspect also answers the inputs of a train-time watermark. For
    a trigger set, a model built without it names each trigger's keyed label with chance
    1/k, so the binomial p-value is exact. For an entangled watermark (EWE), the suspect
    also answers 50 decoy watermarks (300 queries) that other keys would have made; the
    watermark is tested against the suspect's own rates on them and against models trained
    without it when it was embedded, and both must reject."""
    if config is None and trigger_set is None:
        raise ConfigError("verify needs --config (a serve-time watermark) or --trigger-set "
                          "(a train-time one), or both.")
    out: dict[str, Any] = {}
    if trigger_set is not None:
        out["trigger_set"] = _trigger_verdict(trigger_set, suspect, protocol, suspect_key,
                                              suspect_model, alpha)
    if config is None:
        if json_out is not None:
            json_out.write_text(json.dumps(out, indent=2))
        return
    report = _ownership(config, model, suspect, protocol, suspect_key, suspect_model,
                        account, alpha, controls, jitter)
    table = Table("key id", "owner", "tier", "queries", "watermark inputs", "test", "matches",
                  "p-value", "adjusted", "sequential p", title=f"watermarks in {suspect}")
    for a in sorted(report.accounts, key=lambda a: a.p_adjusted):
        r = a.result
        matches = f"{r.matches} of {r.disagreements} disagreeing" if r.test == "label" else \
            f"{r.matches}/{r.watermarks} vs {r.control_matches}/{r.control}" + (
                " in its top" if r.test == "score" else "")
        style = "bold red" if a.matched else ""
        table.add_row(a.key_id, a.owner or "-", a.tier, str(a.queries), str(r.watermarks),
                      r.test, matches, f"{r.p_value:.2g}", f"[{style}]{a.p_adjusted:.2g}[/]"
                      if style else f"{a.p_adjusted:.2g}",
                      "-" if r.p_sequential is None else f"{r.p_sequential:.2g}")
    console.print(table)
    console.print(f"{report.suspect_queries} queries to the suspect; "
                  f"{len(report.skipped)} account(s) had no watermarked answers")
    if jitter > 0:
        console.print(f"rows asked as copies moved by about {jitter:g} of each range, in "
                      f"their cells ({report.unmoved} found no copy and were asked as sent)")
    for a in report.matched:
        console.print(f"[bold red]match[/]: key {a.key_id} ({a.owner or 'no owner'}): "
                      f"{a.result.summary()}; p = {a.p_adjusted:.2g} after {len(report.accounts)}"
                      " account(s) tested")
    if not report.matched:
        console.print(f"no evidence at alpha = {alpha:g}: no account's watermark shows in the "
                      "suspect (this does not prove it independent)")
    if json_out is not None:
        json_out.write_text(json.dumps({**report.to_json(), **out}, indent=2))


def _trigger_verdict(which: str, suspect: str, protocol: str, key: str | None,
                     name: str | None, alpha: float) -> dict[str, Any]:
    """The train-time watermark's test of ``suspect``, printed, as a dict."""
    from modelshield.victims.entangled import EntangledResult, EntangledWatermark, load_mark
    from modelshield.victims.zoo import train_mark

    marks = train_mark(which) if which in ZOO else load_mark(which)
    spec = _trigger_spec(marks)
    predict, close = _suspect(suspect, protocol, key, name, spec)
    try:
        labels = predict(marks.x).labels
        decoys = predict(marks.decoy_inputs).labels if isinstance(
            marks, EntangledWatermark) and len(marks.decoy_x) else None
    finally:
        close()
    result = marks.test(labels, decoys) if isinstance(marks, EntangledWatermark) else \
        marks.test(labels)
    named = result.p_value <= alpha
    kind = "entangled watermark" if isinstance(marks, EntangledWatermark) else "trigger set"
    out = {"trigger_set": which, "kind": kind, "p_value": result.p_value,
           "matches": result.matches, "triggers": result.triggers, "chance": result.chance,
           "matched": named, "queries": len(labels) + (0 if decoys is None else len(decoys))}
    extra, verdict = "", "[bold red]match[/]" if named else "no evidence"
    if isinstance(marks, EntangledWatermark):
        assert isinstance(result, EntangledResult)
        out.update(p_family=result.p_family, p_decoy=result.p_decoy,
                   decoy_rate=result.decoy_rate, decoys_above=result.decoys_above,
                   p_rank=result.p_rank,
                   decoy_queries=result.decoy_queries,
                   queries_to_95=marks.queries_to(labels, 0.05, decoys),
                   queries_to_alpha=marks.queries_to(labels, alpha, decoys))
        extra = (f"; 95% confidence after {out['queries_to_95']} watermark queries"
                 if out["queries_to_95"] else "")
        if decoys is not None:
            extra += f" (and {result.decoy_queries} decoy queries)"
            out["evidence"] = ("supporting: the watermark against the suspect's own answers "
                               f"to {result.decoys} decoy watermarks and against independent "
                               "models, both must reject; below 1/(decoys + 1) the decoy "
                               "null is a fitted Beta, measured rather than exact (0 of "
                               "264 independent models reached p <= 1e-3 in "
                               "bench/watermark_ewe.py)")
        else:
            # A file without decoys (written before them): only the null estimated on a
            # few independent models, which models of other seeds exceeded (7 of 132 at
            # p <= 1e-3 in bench/watermark_ewe.py).
            out["evidence"] = ("supporting: a file without decoys, an estimated null "
                               "alone (7 of 132 independent models reached p <= 1e-3)")
        if named:
            verdict = "[bold yellow]consistent with the watermark[/]"
            extra += (" (an estimated null: supporting evidence beside the serve-time "
                      "watermark and the audit log, not proof on its own; see "
                      "docs/ownership.md)")
    console.print(f"{verdict}: {kind} {which}: {result.summary()}; "
                  f"p = {result.p_value:.2g}{extra}", highlight=False)
    return out


def _trigger_spec(triggers: Any) -> Any:
    """The contract a trigger set implies (its width), to check a suspect API against."""
    import numpy as np

    from modelshield.answer import ApiSpec

    d = triggers.x.shape[1]
    return ApiSpec(n_features=d, classes=tuple(map(str, range(triggers.n_classes))),
                   low=np.full(d, -np.inf), high=np.full(d, np.inf))


@app.command()
def evidence(
    key: Annotated[str, typer.Option("--key", help="The key id the evidence is about.")],
    config: Annotated[Path, typer.Option("--config", help="The gateway config (its audit "
                                         "log, audit keys, terms and watermark).")],
    out: Annotated[Path, typer.Option(help="Folder for evidence.html, evidence.json and "
                                      "records.jsonl.")],
    suspect: Annotated[str | None, typer.Option(
        help="A suspect model (file or URL) to test for this key's watermark.")] = None,
    protocol: Annotated[str, typer.Option(help="With a URL suspect: rest or v2.")] = "rest",
    suspect_key: Annotated[str | None, typer.Option(
        envvar="MODELSHIELD_SUSPECT_KEY", help="With a URL suspect: its API key.")] = None,
    suspect_model: Annotated[str | None, typer.Option(
        help="With a URL suspect: the model's name there.")] = None,
    model: Annotated[str | None, typer.Option(
        help="With a config of several models: which one.")] = None,
    anchor: Annotated[Path | None, typer.Option(
        help="A head saved earlier with `audit-log head`, to show the log still holds it.")]
    = None,
    alpha: Annotated[float, typer.Option(min=1e-12, max=0.5,
                                         help="The watermark test's threshold.")] = 1e-3,
    controls: Controls = MAX_CONTROL,
    jitter: Jitter = 0.0,
) -> None:
    """Write the evidence about one key: who holds it and which terms it accepted, its
    queries, flags and refusals, the watermark test against a suspect, and the proof that
    the records shown are in the audit log, unaltered."""
    from modelshield.audit.evidence import gather, write_evidence

    cfg = _load(config)
    saved = _read_anchor(anchor)
    store = _store(config)
    verdict = store.verify(anchor=saved)
    ownership = None
    if suspect is not None:
        ownership = _ownership(config, model, suspect, protocol, suspect_key, suspect_model,
                               None, alpha, controls, jitter)
    doc, records = gather(store, key, {cfg.terms_version: cfg.terms}, verdict, ownership,
                          saved)
    paths = write_evidence(doc, records, out)
    w = doc["watermark"]
    console.print(f"key {key} ({doc['key']['owner'] or 'no holder recorded'}): "
                  f"{doc['activity']['requests']} requests, {len(doc['flags'])} flag(s); "
                  f"audit log {'intact' if verdict.ok else 'BROKEN'} ({verdict.checked} records)"
                  + ("" if w is None else f"; watermark {'MATCHED' if w['matched'] else 'not matched'}"
                     f" in {suspect}"))
    console.print(f"wrote {paths['html']}, {paths['json'].name} and {paths['records'].name}")
    if not verdict.ok:
        err.print("[bold red]the audit log's chain is broken[/]: the page says where")


@app.command("detect-text")
def detect_text(
    files: Annotated[list[Path], typer.Argument(help="Text files to test ('-' reads stdin).")],
    config: Annotated[Path, typer.Option("--config", help="The gateway config whose tiers "
                                         "watermark their completions (llm.watermark_delta).")],
    alpha: Annotated[float, typer.Option(min=1e-15, max=0.5, help="Call a text watermarked "
                                         "at this p-value or below.")] = 1e-4,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")]
    = None,
) -> None:
    """Test texts for the gateway's text watermark (Kirchenbauer et al. 2023).

    Each distinct pair of consecutive tokens is scored once; a text written without the
    key is green at each with chance gamma, so the binomial p-value is exact. Prints the
    pairs scored, the green ones, z and p."""
    from modelshield.defenses.textmark import TextWatermark
    from modelshield.serve.factory import load_model

    cfg = _load(config)
    gammas = {t.llm.watermark_gamma for t in cfg.all_tiers().values() if t.llm.watermark_delta > 0}
    if not gammas or not cfg.watermark_secret or not (cfg.model.lm or cfg.model.lm_upstream):
        raise ConfigError("The config has no language-model tier with a text watermark "
                          "(tiers.NAME.llm.watermark_delta > 0).")
    if len(gammas) > 1:
        raise ConfigError("detect-text: the watermarked tiers use different gammas; give "
                          "them one.")
    lm, _, _ = load_model(cfg)
    mark = TextWatermark(cfg.watermark_secret, lm.vocab, gammas.pop())
    table = Table("text", "tokens", "pairs scored", "green", "z", "p-value", "watermarked",
                  title="text watermark")
    rows = []
    for f in files:
        text = sys.stdin.read() if str(f) == "-" else _read_text(f)
        tokens = lm.tokenizer.encode(text)
        score = mark.score(tokens)
        hit = score.p_value <= alpha
        rows.append({"text": str(f), "tokens": len(tokens), "scored": score.scored,
                     "green": score.green, "z": score.z, "p_value": score.p_value,
                     "watermarked": hit})
        table.add_row(str(f), str(len(tokens)), str(score.scored), str(score.green),
                      f"{score.z:.2f}", f"{score.p_value:.2g}",
                      "[bold red]yes[/]" if hit else "no")
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps({"alpha": alpha, "texts": rows}, indent=2))


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"{path} does not exist.")
    return path.read_text(encoding="utf-8", errors="replace")


def _ownership(config: Path, model: str | None, suspect: str, protocol: str,
               suspect_key: str | None, suspect_model: str | None, account: str | None,
               alpha: float, controls: int, jitter: float = 0.0) -> Any:
    """The watermark test of ``suspect`` against the config's watermarked accounts."""
    from modelshield.audit.ownership import verify as run_verify
    from modelshield.defenses.watermark import ServeWatermark
    from modelshield.serve.factory import load_model, open_store

    cfg = _load(config)
    if cfg.models:
        names = [m.name or m.builtin or m.file or "" for m in cfg.models]
        if model not in names:
            raise ConfigError(f"--model: the config serves several models; name one of: "
                              f"{', '.join(names)}.")
        cfg = cfg.for_model(cfg.models[names.index(model)])
    tiers = {n: t for n, t in cfg.tiers.items() if t.watermark is not None}
    if not tiers or not cfg.watermark_secret:
        raise ConfigError("The config has no tier with a watermark (tiers.NAME.watermark), "
                          "so there is nothing to verify.")
    rates = {(t.watermark.rate, t.watermark.cell, t.watermark.projections)
             for t in tiers.values()}
    if len(rates) > 1:
        raise ConfigError("verify: the watermarked tiers use different settings; give them "
                          "one rate, cell and projections.")
    own, spec, _ = load_model(cfg)
    rate, cell, projections = rates.pop()
    wm = ServeWatermark(cfg.watermark_secret, spec, rate, cell, projections)
    predict, close = _suspect(suspect, protocol, suspect_key, suspect_model, spec)
    try:
        return run_verify(wm, open_store(cfg), own, spec.name, predict, suspect, list(tiers),
                          account=account, alpha=alpha, controls=controls, jitter=jitter)
    finally:
        close()


def _suspect(where: str, protocol: str, key: str | None, name: str | None, spec: Any
             ) -> tuple[Any, Any]:
    """(rows -> its answer: labels, and every class's score where it gives them; close)
    for a suspect file or API."""
    if where.startswith(("http://", "https://")):
        from modelshield.oracle import HttpOracle

        if not key:
            raise ConfigError("--suspect-key: a URL suspect needs an API key (or set "
                              "MODELSHIELD_SUSPECT_KEY).")
        oracle = HttpOracle(where, key, model=name, protocol=protocol)
        if oracle.spec.n_features != spec.n_features:
            oracle.close()
            raise ConfigError(f"--suspect: it takes {oracle.spec.n_features} features; our "
                              f"model takes {spec.n_features}.")

        return oracle.query, oracle.close
    from modelshield.victims import load_model_file

    adapter = load_model_file(where)
    return adapter.predict, (lambda: None)


@keys_app.command("create")
def keys_create(tier: Annotated[str, typer.Option(help="Tier the key belongs to.")],
                owner: Annotated[str, typer.Option(help="Who holds the key.")] = "",
                ttl_days: Annotated[float | None, typer.Option(help="Expire after N days.")] = None,
                config: ConfigOpt = None) -> None:
    """Create a key; its holder accepts the configured terms of service. Shown once."""
    cfg = _load(config)
    if tier not in cfg.all_tiers():
        raise ConfigError.invalid("tier", f"one of {', '.join(cfg.all_tiers())}", tier)
    secret, key = _store(config).create_key(tier, owner, cfg.terms_version,
                                            None if ttl_days is None else ttl_days * 86400)
    console.print(f"key id {key.key_id}, tier {tier}, terms v{cfg.terms_version} accepted")
    print(secret)


@keys_app.command("list")
def keys_list(config: ConfigOpt = None) -> None:
    """List keys (ids, tiers, state; never the secrets)."""
    cfg = _load(config)
    table = Table("key id", "tier", "owner", "state", "terms", title="API keys")
    for k in _store(config).list_keys():
        state = "revoked" if k.revoked_at else ("expired" if not k.usable(time.time()) else "active")
        if state == "active" and k.flag is not None:
            tier = cfg.all_tiers().get(k.tier)
            action = tier.on_flag if tier is not None else "alert"
            state = {"deny": "suspended", "throttle": "throttled", "degrade": "degraded"}.get(
                action, "flagged") + f" ({k.flag['detector']})"
        table.add_row(k.key_id, k.tier, k.owner, state, f"v{k.terms_version}")
    console.print(table)


@keys_app.command("reinstate")
def keys_reinstate(key_id: Annotated[str, typer.Argument(help="The key id (from keys list).")],
                   config: ConfigOpt = None) -> None:
    """Lift a key's flag (and so its suspension). A gateway with Redis state sees it at
    once; one with memory:// state, at its next start."""
    cfg = _load(config)
    if not _store(config).clear_flag(key_id):
        raise ConfigError(f"No flag on key {key_id!r}.")
    if not cfg.storage.limits.startswith("memory://"):
        from modelshield.defenses.state import state_from_url

        # The key's flag in the shared state: the gateway's, and each model's own scope.
        scopes = [""] + [m.name or m.lm or m.builtin or "" for m in cfg.models]
        for scope in dict.fromkeys(scopes):
            state_from_url(cfg.storage.limits, scope).delete(f"flag:{key_id}")
    console.print(f"reinstated {key_id}")


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (from keys list).")],
                config: ConfigOpt = None) -> None:
    """Revoke a key at once."""
    if not _store(config).revoke(key_id):
        raise ConfigError(f"No active key with id {key_id!r}.")
    console.print(f"revoked {key_id}")


@audit_log_app.command("verify")
def audit_log_verify(config: ConfigOpt = None,
                     anchor: Annotated[Path | None, typer.Option(
                         "--anchor", help="A head saved earlier with `audit-log head`: also "
                         "check the log still holds it (catches a rollback of the whole log).")]
                     = None) -> None:
    """Check every record's seal and the chain head, and name each break: records edited,
    inserted, removed, moved, or removed at the end."""
    saved = _read_anchor(anchor)
    verdict = _store(config).verify(anchor=saved)
    versions = ", ".join(f"{n} with {v or 'no version (older modelshield)'}"
                         for v, n in verdict.versions.items()) or "no records"
    if verdict.ok:
        console.print(f"[green]chain intact[/]: {verdict.checked} records ({versions})"
                      + (f"; anchor at record {saved['seq']} found" if saved else ""))
        if verdict.checked and not verdict.keyed:
            err.print("[yellow]warning[/]: some records are not sealed with a key; they "
                      "show accidents, not tampering by whoever can write the database")
        return
    table = Table("where", "break", "what was found", title="audit log: chain broken")
    for brk in verdict.breaks:
        where = "head" if brk.first < 0 else (
            str(brk.first) if brk.first == brk.last else f"{brk.first}-{brk.last}")
        table.add_row(where, brk.kind, brk.detail)
    err.print(table)
    err.print(f"[bold red]chain broken[/]: {len(verdict.breaks)} break(s)"
              + (" (more not listed)" if verdict.truncated else "")
              + f" in {verdict.checked} records")
    raise typer.Exit(1)


def _read_anchor(anchor: Path | None) -> dict[str, Any] | None:
    if anchor is None:
        return None
    try:
        saved: dict[str, Any] = json.loads(anchor.read_text())
        int(saved["seq"]), str(saved["hash"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--anchor {anchor}: not a head written by `modelshield "
                          f"audit-log head` ({exc})") from None
    return saved


@audit_log_app.command("check-records")
def audit_log_check_records(records: Annotated[Path, typer.Argument(
        help="A records.jsonl written by `modelshield evidence`.")],
        config: ConfigOpt = None) -> None:
    """Check each exported record's seal with the config's audit keys (a third party
    given the key can check the evidence without the database)."""
    from modelshield.audit.evidence import check_records

    if not records.is_file():
        raise ConfigError(f"{records} does not exist.")
    n, bad = check_records(records, _load(config).audit_keys)
    if bad:
        err.print(f"[bold red]{len(bad)} of {n} records do not match their seals[/]: "
                  f"positions {', '.join(map(str, bad[:20]))}")
        raise typer.Exit(1)
    console.print(f"[green]all {n} records match their seals[/]")


@audit_log_app.command("head")
def audit_log_head(config: ConfigOpt = None) -> None:
    """Print the chain head as JSON. Keep a copy where the database's writers cannot reach
    (a ticket, another system's log); `verify --anchor` checks it later."""
    print(json.dumps({**_store(config).head(), "taken_at": time.time()}))


@audit_log_app.command("new-key")
def audit_log_new_key(version: Annotated[str | None, typer.Option(
        help="The new key's version (default: this month, e.g. 2026-11).")] = None) -> None:
    """Print a new random audit key to add under audit_keys. Keep the old versions listed
    so their records still check; new records are sealed with the last one listed (or
    audit_key_version)."""
    import secrets

    version = version or time.strftime("%Y-%m", time.gmtime())
    print(f'audit_keys:\n  # ...the versions already there, then:\n'
          f'  "{version}": "{secrets.token_urlsafe(32)}"')


@audit_log_app.command("flags")
def audit_log_flags(config: ConfigOpt = None) -> None:
    """List every flagged account or group: when, which detector, and why."""
    table = Table("when (UTC)", "account or group", "detector", "score", "reason",
                  title="flags")
    for f in _store(config).flags():
        table.add_row(_when(f["ts"]), f["ident"], f["detector"], f"{f['score']:.4g}",
                      f["reason"])
    console.print(table)


@audit_log_app.command("show")
def audit_log_show(key: Annotated[str | None, typer.Option(
                       "--key", help="Only this key id's records.")] = None,
                   limit: Annotated[int, typer.Option(min=1, help="The last N records.")] = 50,
                   config: ConfigOpt = None) -> None:
    """Show the last records of the log (or of one key): answers and refusals."""
    table = Table("seq", "when (UTC)", "key id", "client", "rows", "outcome", "policy / reason",
                  title="audit log" + (f" of key {key}" if key else ""))
    for rec in _store(config).records(limit=limit, key_id=key):
        d = json.loads(rec["decision"])
        if d.get("action") == "refuse":
            outcome, why = f"[red]{d['status']} {d['code']}[/]", d.get("reason", "")
        else:
            outcome = d.get("action", "allow")
            flags = ", ".join(f["detector"] for f in d.get("flags", []))
            why = d.get("policy", "") + (f"; flagged by {flags}" if flags else "")
        table.add_row(str(rec["seq"]), _when(rec["ts"]), rec["key_id"] or "—",
                      rec["client_ip"], str(rec["rows"]), outcome, why)
    console.print(table)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def results_table(results: list[Result]) -> Table:
    table = Table("victim", "attack", "policy", "queries", "$", "acc", "fid test [95% CI]",
                  "fid unif", "param err", "status", title="extraction results")

    def num(x: float | None, fmt: str = ".4f") -> str:
        return "—" if x is None else format(x, fmt)

    def fid(r: Result) -> str:
        if r.fidelity_test is None or r.fidelity_test_ci is None:
            return num(r.fidelity_test)
        lo, hi = r.fidelity_test_ci
        return f"{r.fidelity_test:.4f} [{lo:.3f}, {hi:.3f}] n={r.test_rows}"

    for r in results:
        status = r.status if r.status == "ok" else f"[yellow]{r.status}[/]"
        table.add_row(r.victim, r.attack, r.policy, str(r.queries), num(r.cost, ".2f"),
                      num(r.accuracy), fid(r), num(r.fidelity_uniform),
                      num(r.parameter_error, ".1e"), status)
    notes = {r.reason for r in results if r.reason}
    if notes:
        table.caption = "\n".join(sorted(notes))
    return table


if __name__ == "__main__":  # pragma: no cover
    main()
