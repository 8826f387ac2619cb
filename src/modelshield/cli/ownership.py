"""``verify``, ``evidence`` and ``detect-text``: whether a suspect model or text carries
our watermark, and the evidence about one key."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from modelshield.cli._common import console, err, load_config, open_config_store
from modelshield.cli.render import ownership_table
from modelshield.defenses.watermark import MAX_CONTROL
from modelshield.errors import ConfigError

if TYPE_CHECKING:
    from modelshield.audit.ownership import OwnershipReport
    from modelshield.audit.train_marks import TrainMarkVerdict
    from modelshield.audit.verify_suspect import SuspectAt
    from modelshield.defenses.config import ShieldConfig

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

Suspect = Annotated[str, typer.Option(
    help="The suspect model: a file (.joblib, .pt, .onnx; e.g. a clone saved with "
         "`attack --save-clone`) or the URL of an API that serves it.")]
VerifyConfig = Annotated[Path | None, typer.Option(
    "--config", help="The gateway config whose watermarked tiers answered the accounts.")]
TriggerSetOpt = Annotated[str | None, typer.Option(
    help="Also (or only) test a train-time watermark: a trigger set or an entangled "
         "watermark (a file written by TriggerSet.save or EntangledWatermark.save), or a "
         "built-in victim's name (modelshield victims).")]
Account = Annotated[str | None, typer.Option(
    help="Test this key id only (default: every key of a watermarked tier).")]
Protocol = Annotated[str, typer.Option(
    help="With a URL: rest (POST /v1/models/NAME/predict) or v2 (the Open Inference "
         "Protocol).")]
SuspectKey = Annotated[str | None, typer.Option(
    envvar="MODELSHIELD_SUSPECT_KEY", help="With a URL: the API key to query it with.")]
SuspectModel = Annotated[str | None, typer.Option(
    help="With a URL: the model's name there (when it serves several).")]
Model = Annotated[str | None, typer.Option(
    help="With a config of several models: which one (its name).")]
VerifyAlpha = Annotated[float, typer.Option(
    min=1e-12, max=0.5, help="Name an account only at this p-value or below, after "
         "multiplying by the number of accounts tested.")]
JsonOut = Annotated[Path | None, typer.Option("--json", help="Write the result here.")]


def verify(suspect: Suspect, config: VerifyConfig = None, trigger_set: TriggerSetOpt = None,
           account: Account = None, protocol: Protocol = "rest",
           suspect_key: SuspectKey = None, suspect_model: SuspectModel = None,
           model: Model = None, alpha: VerifyAlpha = 1e-3, controls: Controls = MAX_CONTROL,
           jitter: Jitter = 0.0, json_out: JsonOut = None) -> None:
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
    from modelshield.audit.verify_suspect import SuspectAt

    if config is None and trigger_set is None:
        raise ConfigError("verify needs --config (a serve-time watermark) or --trigger-set "
                          "(a train-time one), or both.")
    at = SuspectAt(suspect, protocol, suspect_key, suspect_model)
    out: dict[str, Any] = {}
    if trigger_set is not None:
        out["trigger_set"] = _trigger_verdict(trigger_set, at, alpha)
    if config is None:
        if json_out is not None:
            json_out.write_text(json.dumps(out, indent=2))
        return
    report = _ownership(load_config(config), model, at, account=account, alpha=alpha,
                        controls=controls, jitter=jitter)
    _print_ownership(report, suspect, jitter, alpha)
    if json_out is not None:
        json_out.write_text(json.dumps({**report.to_json(), **out}, indent=2))


def _ownership(cfg: ShieldConfig, model: str | None, at: SuspectAt, *,
               account: str | None = None, alpha: float, controls: int, jitter: float
               ) -> OwnershipReport:
    """The serve-time watermark test of the suspect against the config's model."""
    from modelshield.audit.verify_suspect import one_model, verify_suspect, watermark_plan
    from modelshield.serve.factory import load_model, open_store

    cfg = one_model(cfg, model)
    plan = watermark_plan(cfg)
    own, spec, _ = load_model(cfg)
    return verify_suspect(plan, own, spec, open_store(cfg), at, account=account, alpha=alpha,
                          controls=controls, jitter=jitter)


def _print_ownership(report: OwnershipReport, suspect: str, jitter: float,
                     alpha: float) -> None:
    console.print(ownership_table(report, suspect))
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


def _trigger_verdict(which: str, at: SuspectAt, alpha: float) -> dict[str, Any]:
    """The train-time watermark's test of the suspect, printed, as a dict."""
    from modelshield.audit.train_marks import ask_suspect, judge_train_mark, load_train_mark
    from modelshield.oracle.suspect import open_suspect

    mark = load_train_mark(which)
    suspect = open_suspect(at.where, mark.x.shape[1], protocol=at.protocol, key=at.key,
                           name=at.model)
    try:
        answers = ask_suspect(mark, suspect.predict)
    finally:
        suspect.close()
    verdict = judge_train_mark(which, mark, answers, alpha)
    console.print(verdict_line(verdict), highlight=False)
    return verdict.record


def verdict_line(v: TrainMarkVerdict) -> str:
    """The verdict as one line: a trigger set's match is a match; an entangled
    watermark's, consistent with it (its null is estimated)."""
    label, extra = "[bold red]match[/]" if v.matched else "no evidence", ""
    if v.entangled:
        q95 = v.record["queries_to_95"]
        extra = f"; 95% confidence after {q95} watermark queries" if q95 else ""
        if v.record["p_decoy"] is not None:
            extra += f" (and {v.record['decoy_queries']} decoy queries)"
        if v.matched:
            label = "[bold yellow]consistent with the watermark[/]"
            extra += (" (an estimated null: supporting evidence beside the serve-time "
                      "watermark and the audit log, not proof on its own; see "
                      "docs/ownership.md)")
    return (f"{label}: {v.kind} {v.which}: {v.result.summary()}; "
            f"p = {v.result.p_value:.2g}{extra}")


EvidenceKey = Annotated[str, typer.Option("--key", help="The key id the evidence is about.")]
EvidenceConfig = Annotated[Path, typer.Option(
    "--config", help="The gateway config (its audit log, audit keys, terms and watermark).")]
EvidenceOut = Annotated[Path, typer.Option(
    help="Folder for evidence.html, evidence.json and records.jsonl.")]
EvidenceSuspect = Annotated[str | None, typer.Option(
    help="A suspect model (file or URL) to test for this key's watermark.")]
EvidenceProtocol = Annotated[str, typer.Option(help="With a URL suspect: rest or v2.")]
EvidenceSuspectKey = Annotated[str | None, typer.Option(
    envvar="MODELSHIELD_SUSPECT_KEY", help="With a URL suspect: its API key.")]
EvidenceSuspectModel = Annotated[str | None, typer.Option(
    help="With a URL suspect: the model's name there.")]
EvidenceModel = Annotated[str | None, typer.Option(
    help="With a config of several models: which one.")]
Anchor = Annotated[Path | None, typer.Option(
    help="A head saved earlier with `audit-log head`, to show the log still holds it.")]
Alpha = Annotated[float, typer.Option(min=1e-12, max=0.5, help="The watermark test's threshold.")]


def evidence(key: EvidenceKey, config: EvidenceConfig, out: EvidenceOut,
             suspect: EvidenceSuspect = None, protocol: EvidenceProtocol = "rest",
             suspect_key: EvidenceSuspectKey = None,
             suspect_model: EvidenceSuspectModel = None, model: EvidenceModel = None,
             anchor: Anchor = None, alpha: Alpha = 1e-3, controls: Controls = MAX_CONTROL,
             jitter: Jitter = 0.0) -> None:
    """Write the evidence about one key: who holds it and which terms it accepted, its
    queries, flags and refusals, the watermark test against a suspect, and the proof that
    the records shown are in the audit log, unaltered."""
    from modelshield.audit.evidence import gather, write_evidence
    from modelshield.audit.verify_suspect import SuspectAt
    from modelshield.cli.audit_log import configured_anchor

    cfg = load_config(config)
    saved, _ = configured_anchor(anchor, cfg.audit_anchor)
    store = open_config_store(config)
    verdict = store.verify(anchor=saved)
    ownership = None if suspect is None else _ownership(
        cfg, model, SuspectAt(suspect, protocol, suspect_key, suspect_model), alpha=alpha,
        controls=controls, jitter=jitter)
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


Texts = Annotated[list[Path], typer.Argument(help="Text files to test ('-' reads stdin).")]
TextConfig = Annotated[Path, typer.Option(
    "--config", help="The gateway config whose tiers watermark their completions "
    "(llm.watermark_delta).")]
TextAlpha = Annotated[float, typer.Option(
    min=1e-15, max=0.5, help="Call a text watermarked at this p-value or below.")]


def detect_text(files: Texts, config: TextConfig, alpha: TextAlpha = 1e-4,
                json_out: JsonOut = None) -> None:
    """Test texts for the gateway's text watermark (Kirchenbauer et al. 2023).

    Each distinct pair of consecutive tokens is scored once; a text written without the
    key is green at each with chance gamma, so the binomial p-value is exact. Prints the
    pairs scored, the green ones, z and p."""
    from modelshield.cli.render import text_table
    from modelshield.serve.text_check import score_text, text_detector

    detector = text_detector(load_config(config))
    verdicts = [score_text(detector, str(f), sys.stdin.read() if str(f) == "-" else _read_text(f),
                           alpha) for f in files]
    console.print(text_table(verdicts))
    if json_out is not None:
        json_out.write_text(json.dumps({"alpha": alpha,
                                        "texts": [v.to_json() for v in verdicts]}, indent=2))


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"{path} does not exist.")
    return path.read_text(encoding="utf-8", errors="replace")
