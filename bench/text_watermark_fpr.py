"""How often text written without the key is called watermarked, over many keys: the false
positive rate of the text watermark's test, measured precisely enough to compare with
1e-4.

    python bench/text_watermark_fpr.py [--keys 200]

bench/text_watermark.py scores every 200-token window of the three corpora (text nobody
generated) with one key: 8,304 windows, too few to tell a rate of 1e-4 from 2e-4. Each key
draws its own green lists, so scoring the same windows with many keys gives that many
independent tests per window (the windows are fixed; the keys are what varies, as they
vary between owners). Each window is scored as ``TextWatermark.score`` does it (distinct
pairs, exact binomial p-value), with the green lists of ``TextWatermark.green``.

Reported, at alpha 1e-4 (``detect-text``'s default) and 1e-5: the share of tests at or
below alpha, with its 95% Clopper-Pearson interval; and the share with z >= 4. Writes
bench/results/text_watermark_fpr.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from harness import show, write

from modelshield.defenses.textmark import TextWatermark
from modelshield.victims.lm import corpus, load_lm, token_stream

GAMMA = 0.25
ALPHAS = (1e-4, 1e-5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--window", type=int, default=200)
    args = ap.parse_args()
    lm = load_lm("lm-h128", 0)
    vocab = lm.vocab
    windows: list[np.ndarray] = []  # per window: its distinct pairs, as prev * vocab + next
    for name in ("public", "held-out", "private"):
        stream = token_stream(lm.tokenizer, corpus(name))
        for s in range(0, len(stream) - args.window, args.window):
            w = stream[s:s + args.window]
            windows.append(np.unique(w[:-1] * vocab + w[1:]))
    n = np.array([len(p) for p in windows])
    flat = np.concatenate(windows)
    owner = np.repeat(np.arange(len(windows)), n)
    prevs = np.unique(flat // vocab)
    hits = {a: 0 for a in ALPHAS}
    z4 = 0
    for k in range(args.keys):
        mark = TextWatermark(f"fpr-key-{k}", vocab, GAMMA)
        green_of = np.zeros((vocab, vocab), dtype=bool)
        for p in prevs:
            green_of[p] = mark.green(int(p))
        green = np.bincount(owner, weights=green_of[flat // vocab, flat % vocab],
                            minlength=len(windows)).astype(np.int64)
        p_value = np.where(green > 0, stats.binom.sf(green - 1, n, GAMMA), 1.0)
        z = (green - GAMMA * n) / np.sqrt(n * GAMMA * (1 - GAMMA))
        for a in ALPHAS:
            hits[a] += int(np.sum(p_value <= a))
        z4 += int(np.sum(z >= 4))
    tests = len(windows) * args.keys
    rows, out = [], []
    for a in ALPHAS:
        ci = stats.binomtest(hits[a], tests).proportion_ci(0.95)
        rows.append([f"p <= {a:g}", hits[a], tests, hits[a] / tests, ci.low, ci.high])
        out.append({"alpha": a, "hits": hits[a], "tests": tests, "rate": hits[a] / tests,
                    "ci95": [ci.low, ci.high]})
    rows.append(["z >= 4", z4, tests, z4 / tests, None, None])
    show(f"text nobody generated: {len(windows):,} windows of {args.window} tokens x "
         f"{args.keys} keys", ["test", "called watermarked", "tests", "rate", "95% low",
                               "95% high"], rows)
    write("text_watermark_fpr", {"keys": args.keys, "window": args.window,
                                 "windows": len(windows), "gamma": GAMMA, "alphas": out,
                                 "z_ge_4": {"hits": z4, "tests": tests}})


if __name__ == "__main__":
    main()
