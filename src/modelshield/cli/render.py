"""The commands' Rich tables: results in, a table out, nothing printed here."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from modelshield.attacks.logit_stealing import LMExtraction
    from modelshield.attacks.prompt_extraction import PromptLeak
    from modelshield.audit.canary_run import CanaryRun
    from modelshield.audit.evaluate import Result
    from modelshield.audit.ownership import AccountVerdict, OwnershipReport
    from modelshield.serve.text_check import TextVerdict
    from modelshield.store.chain import Break


def num(x: float | None, fmt: str = ".4f") -> str:
    """``x`` formatted, or a dash for none."""
    return "—" if x is None else format(x, fmt)


def when(ts: float) -> str:
    """A Unix time as UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _fidelity(r: Result) -> str:
    if r.fidelity_test is None or r.fidelity_test_ci is None:
        return num(r.fidelity_test)
    lo, hi = r.fidelity_test_ci
    return f"{r.fidelity_test:.4f} [{lo:.3f}, {hi:.3f}] n={r.test_rows}"


def results_table(results: list[Result]) -> Table:
    """Extraction results, one row per attack, with the reasons as a caption."""
    table = Table("victim", "attack", "policy", "queries", "$", "acc", "fid test [95% CI]",
                  "fid unif", "param err", "status", title="extraction results")
    for r in results:
        status = r.status if r.status == "ok" else f"[yellow]{r.status}[/]"
        table.add_row(r.victim, r.attack, r.policy, str(r.queries), num(r.cost, ".2f"),
                      num(r.accuracy), _fidelity(r), num(r.fidelity_uniform),
                      num(r.parameter_error, ".1e"), status)
    notes = {r.reason for r in results if r.reason}
    if notes:
        table.caption = "\n".join(sorted(notes))
    return table


def lm_attack_table(attack: str, e: LMExtraction) -> Table:
    """One language-model stealing attack's extraction."""
    table = Table("attack", "variant", "hidden size", "queries", "requests", "tokens", "$",
                  "seconds", title="language-model stealing")
    table.add_row(attack, e.variant, str(e.hidden_size), f"{e.queries:,}",
                  f"{e.requests:,}", f"{e.tokens:,}", f"{e.cost:.2f}", f"{e.seconds:.1f}")
    return table


def q90(r: Mapping[str, Any]) -> str:
    """Queries to 90%, with the range the test set's size leaves (see the report)."""
    point = "—" if r["q90"] is None else f"{r['q90']:,}"
    span = r.get("q90_range")
    if not span or span == [r["q90"], r["q90"]]:
        return point
    lo, hi = ("—" if v is None else f"{v:,}" for v in span)
    return f"{point} ({lo} to {hi})"


def audit_table(doc: Mapping[str, Any]) -> Table:
    """Each defense's attackers: best fidelity, queries and dollars to 90%, first flag."""
    table = Table("defense", "attacker", "status", "best fid", "queries to 90%", "$ to 90%",
                  "first flagged", title="exposure by defense")
    for d in doc["analysis"]["defenses"]:
        for r in d["attackers"]:
            flag = r["first_flag"]
            status = r["status"] if r["status"] == "ok" else f"[yellow]{r['status']}[/]"
            table.add_row(d["name"], r["attacker"], status,
                          "—" if r["best_fidelity"] is None else f"{r['best_fidelity']:.4f}",
                          q90(r), "—" if r["usd90"] is None else f"${r['usd90']:,.2f}",
                          "never" if flag is None else f"{flag['query']:,} ({flag['detector']})")
    return table


def membership_table(rows: Sequence[Mapping[str, Any]], title: str) -> Table:
    """Membership attacks: TPR at three false-positive rates, AUC, queries, cost, time."""
    table = Table("attack", "needs", "TPR@1%", "TPR@0.1%", "TPR@0.001%", "AUC", "queries", "$",
                  "seconds", title=title)
    for row in rows:
        if row["status"] != "ok":
            table.add_row(row["attack"], row["needs"], f"{row['status']}: {row['reason']}", "",
                          "", "", str(row.get("queries", 0)), "", "")
            continue
        t = row["tpr"]
        table.add_row(row["attack"], row["needs"], f"{t['1%']:.3f}", f"{t['0.1%']:.3f}",
                      f"{t['0.001%']:.3f}", f"{row['auc']:.3f}", str(row["queries"]),
                      f"{row['cost']:.2f}", f"{row['seconds']:.1f}")
    return table


def _bits(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def canary_table(run: CanaryRun, title: str, references: int) -> Table:
    """Each canary's exposure, rank and whether greedy decoding or beam search found it."""
    table = Table("canary", "inserted", "exposure (interp.)", "exposure (extrap.)",
                  "rank", "greedy", "beam", "queries", title=title)
    for r in run.rows:
        e = r.exposure
        table.add_row(r.prefix, f"{r.repeats}x", _bits(None if e is None else e.interpolation),
                      _bits(None if e is None else e.extrapolation),
                      "—" if e is None else f"{e.rank} of {references}",
                      "yes" if r.greedy else "no",
                      "—" if e is None else ("yes" if e.beam else "no"),
                      f"{0 if e is None else e.queries:,}")
    return table


def probes_table(leak: PromptLeak, probes: Iterable[str]) -> Table:
    """Each system-prompt probe: requests, redactions, refusals and its recovery."""
    table = Table("probe", "requests", "redacted", "refused", "ROUGE-L recall", "exact",
                  title="system-prompt probes")
    for name in probes:
        r = leak.per_probe.get(name)
        table.add_row(name, str(leak.sent.get(name, 0)),
                      str(leak.redacted.get(name, 0)), leak.refused.get(name, ""),
                      "—" if r is None else f"{r.rouge_l:.2f}",
                      "—" if r is None else ("yes" if r.exact else "no"))
    return table


def _matches(a: AccountVerdict) -> str:
    r = a.result
    if r.test == "label":
        return f"{r.matches} of {r.disagreements} disagreeing"
    return f"{r.matches}/{r.watermarks} vs {r.control_matches}/{r.control}" + (
        " in its top" if r.test == "score" else "")


def ownership_table(report: OwnershipReport, suspect: str) -> Table:
    """Each account's watermark test against the suspect, the most significant first."""
    table = Table("key id", "owner", "tier", "queries", "watermark inputs", "test", "matches",
                  "p-value", "adjusted", "sequential p", title=f"watermarks in {suspect}")
    for a in sorted(report.accounts, key=lambda a: a.p_adjusted):
        r = a.result
        adjusted = f"[bold red]{a.p_adjusted:.2g}[/]" if a.matched else f"{a.p_adjusted:.2g}"
        table.add_row(a.key_id, a.owner or "-", a.tier, str(a.queries), str(r.watermarks),
                      r.test, _matches(a), f"{r.p_value:.2g}", adjusted,
                      "-" if r.p_sequential is None else f"{r.p_sequential:.2g}")
    return table


def honest_check_table(name: str, tiers: Mapping[str, Mapping[str, Mapping[str, int]]]
                       ) -> Table:
    """One model's tiers: how many honest customers of each kind were flagged."""
    kinds: Mapping[str, Any] = next(iter(tiers.values()), {}) if tiers else {}
    t = Table("tier", *kinds, title=f"{name}: honest customers flagged, by kind "
              "(calibrated on half the data, the other half sent)")
    for tier, by in tiers.items():
        t.add_row(tier, *[f"{v['flagged']} / {v['accounts']}" for v in by.values()])
    return t


def calibration_table(rows: Iterable[Mapping[str, Any]]) -> Table:
    """Each detector's counts and thresholds."""
    table = Table("model", "tier", "detector", "counts", "thresholds",
                  title="detector calibration (each tier's fpr shared among its tests)")
    for r in rows:
        detail = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in r.items()
                           if k not in ("model", "tier", "detector", "sees"))
        table.add_row(r["model"], r["tier"], r["detector"], r["sees"], detail)
    return table


def breaks_table(breaks: Iterable[Break]) -> Table:
    """Where the audit log's chain breaks, and how."""
    table = Table("where", "break", "what was found", title="audit log: chain broken")
    for brk in breaks:
        where = "head" if brk.first < 0 else (
            str(brk.first) if brk.first == brk.last else f"{brk.first}-{brk.last}")
        table.add_row(where, brk.kind, brk.detail)
    return table


def flags_table(flags: Iterable[Mapping[str, Any]]) -> Table:
    """Every flag: when, on what, by which detector, and why."""
    table = Table("when (UTC)", "account or group", "detector", "score", "reason",
                  title="flags")
    for f in flags:
        table.add_row(when(f["ts"]), escape(f["ident"]), escape(f["detector"]),
                      f"{f['score']:.4g}", escape(f["reason"]))
    return table


def _outcome(decision: Mapping[str, Any]) -> tuple[str, str]:
    if decision.get("action") == "admin":  # an operator's action, sealed like a request
        return "admin", escape(f"{decision.get('op')} {decision.get('target')}")
    if decision.get("action") == "refuse":
        return (f"[red]{escape(str(decision['status']))} {escape(str(decision['code']))}[/]",
                escape(str(decision.get("reason", ""))))
    flags = ", ".join(str(f["detector"]) for f in decision.get("flags", []))
    return (escape(str(decision.get("action", "allow"))),
            escape(str(decision.get("policy", "")) + (f"; flagged by {flags}" if flags else "")))


def records_table(records: Iterable[Mapping[str, Any]], key: str | None) -> Table:
    """Audit-log records: answers and refusals."""
    import json

    table = Table("seq", "when (UTC)", "key id", "client", "rows", "outcome", "policy / reason",
                  title="audit log" + (f" of key {key}" if key else ""))
    for rec in records:
        outcome, why = _outcome(json.loads(rec["decision"]))
        table.add_row(str(rec["seq"]), when(rec["ts"]), escape(rec["key_id"] or "—"),
                      escape(rec["client_ip"]), str(rec["rows"]), outcome, why)
    return table


def text_table(verdicts: Iterable[TextVerdict]) -> Table:
    """Each text's tokens, pairs scored, green pairs, z, p and verdict."""
    table = Table("text", "tokens", "pairs scored", "green", "z", "p-value", "watermarked",
                  title="text watermark")
    for v in verdicts:
        table.add_row(v.text, str(v.tokens), str(v.scored), str(v.green), f"{v.z:.2f}",
                      f"{v.p_value:.2g}", "[bold red]yes[/]" if v.watermarked else "no")
    return table
