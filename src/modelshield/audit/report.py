"""Render an audit's ``results.json`` as one self-contained HTML page and a Markdown summary.

The page carries its plots as inline SVG and its style inline: no external asset, readable
offline. Everything on it is read from the results document, so ``modelshield report
results.json`` redraws the same page from the same file.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from modelshield.audit.analysis import duration
from modelshield.errors import ConfigError

COLORS = ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f"]
STYLES = ["-", "--", "-.", ":"]
RATING_COLORS = {"HIGH": "#b3261e", "MEDIUM": "#b26a00", "LOWER": "#2e7d32"}


def load_results(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Results file {str(p)!r} does not exist.")
    try:
        doc: dict[str, Any] = json.loads(p.read_text())
    except ValueError as exc:
        raise ConfigError(f"{p}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or "analysis" not in doc or "scenario" not in doc:
        raise ConfigError(f"{p}: not an audit results file (no 'scenario' and 'analysis').")
    return doc


def write_report(doc: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``report.html`` and ``summary.md`` into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    html, md = out / "report.html", out / "summary.md"
    html.write_text(render_html(doc))
    md.write_text(render_markdown(doc))
    return {"html": html, "markdown": md}


# -- figures -------------------------------------------------------------------------------
def inline_svg(fig: Any, prefix: str) -> str:
    """The figure as inline SVG. Its element ids get ``prefix``, so several plots in one
    page never share an id (a clip path or marker of one plot used by another)."""
    buf = io.StringIO()
    # No date and fixed element ids: the same results give the same page, byte for byte.
    with matplotlib.rc_context({"svg.hashsalt": "modelshield"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', text)
    text = re.sub(r'(href="#|url\(#)', rf"\g<1>{prefix}-", text)
    return text[text.index("<svg"):]


def _color(doc: dict[str, Any]) -> dict[str, str]:
    names = [d["name"] for d in doc["analysis"]["defenses"]]
    return {n: COLORS[i % len(COLORS)] for i, n in enumerate(names)}


def fig_curves(doc: dict[str, Any]) -> str:
    """Fidelity against queries, one panel per attacker, one line per defense; a cross where
    the Shield first flagged the attacker, a square where it was blocked."""
    a = doc["analysis"]
    attackers = [r["attacker"] for r in a["defenses"][0]["attackers"]]
    cols = min(3, len(attackers))
    rows = -(-len(attackers) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    color = _color(doc)
    names = [d["name"] for d in a["defenses"]]
    for k, name in enumerate(attackers):
        ax = axes[k // cols][k % cols]
        for d in a["defenses"]:
            r = d["attackers"][k]
            if not r["curve"]:
                continue
            q = [p[0] for p in r["curve"]]
            f = [p[1] for p in r["curve"]]
            # Line styles as well as colours: two defenses with the same curve stay visible.
            ax.plot(q, f, marker="o", ms=3, lw=1.6, color=color[d["name"]], label=d["name"],
                    ls=STYLES[names.index(d["name"]) % len(STYLES)])
            flag = r["first_flag"]
            if flag is not None:
                ax.plot([flag["query"]], [_at(q, f, flag["query"])], marker="X", ms=11,
                        color=color[d["name"]], mec="black", mew=0.8, ls="none")
            if r["blocked_at"] is not None:
                ax.plot([q[-1]], [f[-1]], marker="s", ms=8, color=color[d["name"]],
                        mec="black", ls="none")
        ax.axhline(0.9, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("queries")
        ax.set_ylabel("fidelity (test set)")
        ax.grid(alpha=0.3)
    for k in range(len(attackers), rows * cols):
        axes[k // cols][k % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=False))
    for d in a["defenses"]:  # a defense under which every attack was refused has no line
        if d["name"] not in seen:
            seen[d["name"]] = Line2D([], [], color=color[d["name"]],
                                     ls=STYLES[names.index(d["name"]) % len(STYLES)])
    marks = [Line2D([], [], marker="X", color="grey", mec="black", ls="none",
                        label="first flagged"),
             Line2D([], [], marker="s", color="grey", mec="black", ls="none",
                        label="blocked")]
    fig.legend([*seen.values(), *marks], [*seen.keys(), "first flagged", "blocked"],
               loc="lower center", ncol=min(6, len(seen) + 2), frameon=False,
               bbox_to_anchor=(0.5, -0.06))
    fig.tight_layout()
    return inline_svg(fig, "curves")


def _at(q: list[int], f: list[float], x: int) -> float:
    """Fidelity at query ``x``, read off the curve (log-linear between points)."""
    if x <= q[0]:
        return f[0]
    return float(np.interp(np.log(x), np.log(q), f))


def fig_tradeoff(doc: dict[str, Any]) -> str:
    """Protection against the cost to honest users, one point per defense."""
    a = doc["analysis"]
    color = _color(doc)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for i, d in enumerate(a["defenses"]):
        x = d["honest_cost"] if d["honest_cost"] is not None else 0.0
        deployed = d["name"] == a["deployed"]
        ax.scatter([x], [d["protection"]], s=220 if deployed else 90, color=color[d["name"]],
                   edgecolor="black", zorder=3, marker="*" if deployed else "o")
        # Alternate the labels above and below so that defenses at one spot stay readable.
        ax.annotate(f"{d['name']} ({d['rating']})", (x, d["protection"]),
                    textcoords="offset points", xytext=(8, 6 if i % 2 == 0 else -12),
                    fontsize=9)
    ax.set_xlabel("cost to honest users (accuracy lost + calibration error added\n"
                  "+ share of honest accounts flagged + share refused)")
    ax.set_ylabel("protection (0 = most exposed, 1 = no uncaught clone)")
    ax.set_ylim(-0.05, 1.1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return inline_svg(fig, "tradeoff")


def fig_dollars(doc: dict[str, Any]) -> str:
    """Dollars to an uncaught 90%-fidelity clone, per defense."""
    a = doc["analysis"]
    color = _color(doc)
    names = [d["name"] for d in a["defenses"]]
    fig = Figure(figsize=(6, 0.55 * len(names) + 1.2))
    ax = fig.subplots()
    top = max([d["cheapest_clone"]["usd"] for d in a["defenses"] if d["cheapest_clone"]],
              default=1.0) or 1.0
    for i, d in enumerate(a["defenses"]):
        clone = d["cheapest_clone"]
        if clone is None:
            ax.barh(i, top * 1.1, color="white", edgecolor=color[d["name"]], hatch="//")
            ax.text(top * 0.02, i, "no uncaught clone within the budgets", va="center",
                    fontsize=9)
        else:
            ax.barh(i, clone["usd"], color=color[d["name"]])
            ax.text(clone["usd"], i, f" ${clone['usd']:,.2f} ({clone['attacker']})",
                    va="center", fontsize=9)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, top * 1.6)
    ax.set_xlabel(f"dollars to a 90%-fidelity clone at ${a['price_per_1k']:,.2f} per 1,000 "
                  "queries")
    fig.tight_layout()
    return inline_svg(fig, "dollars")


def fig_privacy(doc: dict[str, Any]) -> str:
    """Log-log ROC of each membership attack, one panel per defense."""
    defenses = [d for d in doc["analysis"]["defenses"]
                if d.get("privacy") and d["privacy"]["attacks"]]
    if not defenses:
        return ""
    cols = min(len(defenses), 3)
    rows = -(-len(defenses) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(defenses):]:
        ax.set_visible(False)
    for ax, d in zip(axes.flat, defenses, strict=False):
        grid = np.logspace(-4, 0, 20)
        ax.plot(grid, grid, color="grey", linestyle=":", linewidth=1)
        for r in d["privacy"]["attacks"]:
            if r["status"] != "ok":
                continue
            tpr = np.maximum(np.asarray(r["roc"]["tpr"]), 1e-4)
            ax.plot(r["roc"]["fpr"], tpr, label=f"{r['attack']} ({r['tpr']['0.1%']:.3f})")
        ax.set(xscale="log", yscale="log", xlim=(1e-4, 1), ylim=(1e-4, 1),
               title=d["name"], xlabel="false-positive rate", ylabel="true-positive rate")
        ax.axvline(1e-3, color="grey", linewidth=0.6, linestyle="--")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return inline_svg(fig, "privacy")


# -- pages ---------------------------------------------------------------------------------
def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("modelshield.audit", "templates"),
                             autoescape=jinja2.select_autoescape(["html.j2"], default=False),
                             undefined=jinja2.StrictUndefined)
    env.filters["pct"] = lambda x, nd=1: "—" if x is None else f"{x:.{nd}%}"
    env.filters["usd"] = lambda x: "—" if x is None else f"${x:,.2f}"
    env.filters["num"] = lambda x: "—" if x is None else f"{x:,}"
    env.filters["f3"] = lambda x: "—" if x is None else f"{x:.3f}"
    env.filters["duration"] = lambda x: "—" if x is None else duration(x)
    return env


def render_html(doc: dict[str, Any]) -> str:
    return _env().get_template("report.html.j2").render(
        doc=doc, s=doc["scenario"], a=doc["analysis"], rating_colors=RATING_COLORS,
        figures={"curves": fig_curves(doc), "tradeoff": fig_tradeoff(doc),
                 "dollars": fig_dollars(doc), "privacy": fig_privacy(doc)})


def render_markdown(doc: dict[str, Any]) -> str:
    return _env().get_template("summary.md.j2").render(doc=doc, s=doc["scenario"],
                                                       a=doc["analysis"])
