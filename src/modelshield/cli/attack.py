"""``attack``: one extraction attack against a built-in victim, your model, or a gateway;
and the language-model stealing attacks (llm-*)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelshield.attacks import ATTACKS
from modelshield.attacks.params import parse_params
from modelshield.audit.evaluate import Result, run_cell
from modelshield.cli._common import ApiKeyOpt, JsonResult, Target, console, err, write_json
from modelshield.cli.render import lm_attack_table, results_table
from modelshield.defenses.policies import parse_policy
from modelshield.errors import ConfigError
from modelshield.victims.zoo import load_victim

if TYPE_CHECKING:
    from modelshield.attacks.logit_stealing import LMExtraction
    from modelshield.oracle.lm import LMOracle
    from modelshield.victims.base import Victim
    from modelshield.victims.lm import LMVictim

AttackName = Annotated[str, typer.Option("--attack", help="Attack (see `modelshield attacks`).")]
VictimOpt = Annotated[str | None, typer.Option(
    help="Built-in victim (see `modelshield victims`); with --target, the model the "
         "gateway serves, used to score the clone and as the attacker's pool.")]
Policy = Annotated[str, typer.Option(
    help="Output policy, e.g. full, round:2, top-k:3, label (in-process; a gateway "
         "applies the key's tier instead).")]
Budget = Annotated[int, typer.Option(min=1, help="Most queries the attacker may send.")]
Seed = Annotated[int, typer.Option(help="Seed for the victim's split and the attack.")]
Price = Annotated[float, typer.Option(
    min=0.0, help="Dollars per 1,000 queries (per 1,000 tokens for language models).")]
Params = Annotated[list[str] | None, typer.Option(
    help="Attack parameter as key=value (repeatable), e.g. --param method=adaptive.")]
Model = Annotated[str | None, typer.Option(
    help="With --target: the model to attack, by the name the gateway serves it under "
         "(needed when it serves several).")]
ModelFile = Annotated[Path | None, typer.Option(
    help="Your own model (.joblib, .pt, .onnx, XGBoost .json/.ubj, LightGBM .txt), to score "
         "the clone against; with --data.")]
Data = Annotated[Path | None, typer.Option(
    help="Your data: an .npz with X_test, y_test and optionally pool (the attacker's "
         "natural rows), low and high (the domain); or a .csv of test rows with a "
         "'label' column.")]
SaveClone = Annotated[Path | None, typer.Option(
    help="Save the clone here (joblib), to verify or compare it later; for "
         "llm-projection, the recovered W (NumPy .npy).")]
Pace = Annotated[float | None, typer.Option(
    min=0.001, help="With --target: wait out each rate limit (HTTP 429) whose "
                    "Retry-After is at most this many seconds, and go on (low and "
                    "slow); without it the attack stops at the first refusal.")]
Vocab = Annotated[int | None, typer.Option(
    min=1, help="Language-model attacks with --target: the model's vocabulary size, for a "
                "server that does not state it in /v1/models (vLLM does not).")]


def attack(attack: AttackName, victim: VictimOpt = None, target: Target = None,
           api_key: ApiKeyOpt = None, policy: Policy = "full", budget: Budget = 1000,
           seed: Seed = 0, price: Price = 1.0, param: Params = None,
           json_out: JsonResult = None, model: Model = None, model_file: ModelFile = None,
           data: Data = None, save_clone: SaveClone = None, pace: Pace = None,
           vocab: Vocab = None) -> None:
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
        lm_attack(attack, victim, target, api_key, budget, seed, price, param or [], json_out,
                  model_file, save_clone, vocab)
        return
    if attack not in ATTACKS:
        raise ConfigError(f"Unknown attack {attack!r}. Choose one of: "
                          f"{', '.join([*ATTACKS, *LM_ATTACKS])}.")
    parse_policy(policy)  # fail on a bad policy before training anything
    params = parse_params(ATTACKS[attack], param or [])
    _check_sources(victim, target, model_file, data, pace)
    v = _scoring_victim(victim, model_file, data, model, seed)
    if target is not None:
        result = _over_http(v, victim, model_file is not None, target, api_key, model, pace,
                            (attack, policy, budget, seed, price, params))
    else:
        assert v is not None
        with console.status(f"{attack} on {victim} behind {policy} …"):
            result = run_cell(v, attack, policy, budget, seed, price, params)
    _report(result, json_out, save_clone)


def _check_sources(victim: str | None, target: str | None, model_file: Path | None,
                   data: Path | None, pace: float | None) -> None:
    if target is None and victim is None and model_file is None:
        raise ConfigError("Give --victim or --model-file with --data (in-process), or "
                          "--target URL --api-key KEY.")
    if victim and model_file:
        raise ConfigError("Give --victim (a built-in model) or --model-file (yours), not both.")
    if (model_file is None) != (data is None):
        raise ConfigError("--model-file and --data go together: your model and its data.")
    if pace is not None and target is None:
        raise ConfigError("--pace waits out a gateway's rate limits: it goes with --target.")


def _scoring_victim(victim: str | None, model_file: Path | None, data: Path | None,
                    model: str | None, seed: int) -> Victim | None:
    """The model the clone is scored against: the owner's files, a built-in, or none."""
    if model_file and data:
        from modelshield.victims.loaders import victim_from_files

        return victim_from_files(model_file, data, model)
    return load_victim(victim, seed=seed) if victim else None


def _over_http(v: Victim | None, victim: str | None, own_model: bool, target: str,
               api_key: str | None, model: str | None, pace: float | None,
               cell: tuple[str, str, int, int, float, dict[str, Any]]) -> Result:
    """The attack on the gateway at ``target``, its clone scored against ``v``."""
    if not api_key:
        raise ConfigError("--target needs --api-key.")
    from modelshield.oracle import HttpOracle

    attack, policy, budget, seed, price, params = cell
    with console.status(f"{attack} on {target} …"), \
            contextlib.closing(HttpOracle(target, api_key, price_per_1k=price,
                                          model=model, pace=pace)) as oracle:
        if v is not None and v.spec.name != oracle.model and not own_model:
            raise ConfigError(f"--victim {victim!r} is not the model the target serves "
                              f"({oracle.model!r}): the fidelity would be against the "
                              "wrong model. Name the served one, or score your own with "
                              "--model-file and --data.")
        if v is not None and v.spec.n_features != oracle.spec.n_features:
            raise ConfigError(f"The scoring model takes {v.spec.n_features} features; "
                              f"the target's {oracle.model!r} takes "
                              f"{oracle.spec.n_features}.")
        check = None
        if v is not None and own_model:  # a file of another model would score the wrong one
            from modelshield.oracle.match import check_model_file

            with contextlib.closing(HttpOracle(target, api_key, model=model,
                                               pace=pace)) as asked:
                check = check_model_file(v, asked, seed=seed)
        result = run_cell(v, attack, policy, budget, seed, price, params, oracle=oracle)
        if check is not None:
            result.info["model_file_check"] = {"queries": check.queries,
                                               "agreed": check.agreed}
            console.print(check.describe())
        if oracle.waited:
            console.print(f"waited out rate limits for {oracle.waited:.1f} s")
    return result


def _report(result: Result, json_out: Path | None, save_clone: Path | None) -> None:
    console.print(results_table([result]))
    if json_out:
        write_json(json_out, result.to_dict())
    if save_clone is not None:
        if result.clone is None:
            err.print("no clone to save: the attack built none (see the status)")
        else:
            import joblib

            joblib.dump(result.clone, save_clone)
            console.print(f"wrote the clone to {save_clone}")
    if result.status != "ok":
        raise typer.Exit(3)


def lm_attack(attack: str, victim: str | None, target: str | None, api_key: str | None,
              budget: int, seed: int, price: float, param: list[str],
              json_out: Path | None, model_dir: Path | None = None,
              save_w: Path | None = None, vocab: int | None = None) -> None:
    """A language-model attack. Over HTTP, --victim lm-NAME (or --model-file DIR, the owner's
    saved model) is the reference the recovered hidden size and W are checked against."""
    from modelshield.attacks.logit_stealing import LM_ATTACKS

    cls = LM_ATTACKS[attack]
    params = parse_params(cls, param)
    with _lm_oracle(victim, target, api_key, seed, price, model_dir, vocab
                    ) as (oracle, reference):
        try:
            with console.status(f"{attack} on {oracle.name} …"):
                e = cls(random_state=seed, **params).run(oracle, budget)
        finally:
            oracle.close()
        console.print(lm_attack_table(attack, e))
        result = _lm_result(attack, e, reference)
    if save_w is not None:
        _save_w(e, save_w)
    for v, why in e.info.get("blocked_variants", {}).items():
        console.print(f"[yellow]{v} blocked:[/] {why}", highlight=False)
    if json_out:
        write_json(json_out, result, default=float)


@contextlib.contextmanager
def _lm_oracle(victim: str | None, target: str | None, api_key: str | None, seed: int,
               price: float, model_dir: Path | None, vocab: int | None = None
               ) -> Iterator[tuple[LMOracle, LMVictim | None]]:
    """The oracle the attack queries, and the reference model to check it against."""
    if target is not None:
        if not api_key:
            raise ConfigError("--target needs --api-key.")
        yield _openai_oracle(target, api_key, _lm_reference(victim, seed, model_dir), price,
                             vocab)
    elif vocab is not None:
        raise ConfigError("--vocab is for a --target that does not state its vocabulary; "
                          "an in-process --victim states it.")
    elif victim is not None:
        from modelshield.oracle.lm import ShieldLMOracle
        from modelshield.serve.local import ALL_LOGPROBS, local_shield

        with contextlib.ExitStack() as stack:
            with console.status(f"loading {victim} …"):
                shield, key = stack.enter_context(local_shield(
                    {"builtin": None, "lm": victim, "seed": seed}, ALL_LOGPROBS))
            yield ShieldLMOracle(shield, key, price_per_1k_tokens=price), shield.lm
    else:
        raise ConfigError("Give --victim lm-NAME (in-process) or --target URL --api-key KEY.")


def _lm_reference(victim: str | None, seed: int, model_dir: Path | None) -> LMVictim | None:
    from modelshield.victims.lm import LMVictim, load_lm

    if model_dir is not None:
        return LMVictim.from_directory(model_dir)
    return load_lm(victim, seed) if victim is not None else None


def _openai_oracle(target: str, api_key: str, reference: LMVictim | None,
                   price: float, vocab: int | None = None
                   ) -> tuple[LMOracle, LMVictim | None]:
    from modelshield.oracle.lm import OpenAIOracle

    oracle = OpenAIOracle(target, api_key, vocab=vocab, price_per_1k_tokens=price)
    if reference is not None and reference.vocab != oracle.vocab:
        oracle.close()
        raise ConfigError(f"The reference model has a vocabulary of {reference.vocab:,}; "
                          f"the target's has {oracle.vocab:,}: it is not the model the "
                          "target serves.")
    return oracle, reference


def _lm_result(attack: str, e: LMExtraction, reference: LMVictim | None) -> dict[str, Any]:
    """The attack's record; with a reference, the true hidden size and W's error."""
    from modelshield.attacks.logit_stealing import alignment_error

    result: dict[str, Any] = {"attack": attack, "variant": e.variant,
                              "hidden_size": e.hidden_size, "queries": e.queries,
                              "requests": e.requests, "tokens": e.tokens, "cost": e.cost,
                              "seconds": e.seconds, "info": e.info}
    if reference is not None:
        result["true_hidden_size"] = reference.hidden
        if e.W is not None:
            result["W_error"] = alignment_error(e.W, reference.W)
            console.print("W alignment error against the reference (defender's check): "
                          f"RMS {result['W_error']['rms']:.3g}, relative "
                          f"{result['W_error']['relative_rms']:.3g}")
    return result


def _save_w(e: LMExtraction, path: Path) -> None:
    if e.W is None:
        err.print("no W to save: this attack recovers the hidden size only")
        return
    import numpy as np

    with path.open("wb") as fh:  # np.save would add .npy to another suffix
        np.save(fh, e.W)
    console.print(f"wrote W ({e.W.shape[0]} x {e.W.shape[1]}) to {path}")
