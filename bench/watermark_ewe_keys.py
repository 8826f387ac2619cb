"""Are the entangled watermark's decoys a fair null? Independent models on other keys.

    python bench/watermark_ewe_keys.py        # the committed run: the synthetic victim,
                                              # seeds 0-2 (the two false claims of the
                                              # old decoys were on 0 and 2); 12 minutes
    python bench/watermark_ewe_keys.py --victims synth-mlp-d20-ewe --seeds 3 4 5 \
        --out watermark_ewe_keys_synth345     # the keys DECOY_MIN_RHO was set on (12 min)

The decoy test of :class:`~modelshield.victims.entangled.EntangledWatermark` rests on one
premise: a model built without our answers cannot tell our key from another key drawn by
the same procedure, so its rate on our watermark is one more draw from its rates on the
decoys. The decoys are drawn on any pair of classes, the real key's included; a decoy
that draws the real key itself draws again. (They used to avoid the real key's pair; this
script showed why that was wrong: docs/bench/watermarks.md.)

This script asks whether the premise holds. It embeds a built-in EWE victim again (the same
secret and seed as the zoo, so the same network and watermark), and, on the network before
the watermark, draws ``--keys`` more keys by the very procedure the real key and the decoys
go through (``_choose``), on any pair of classes. Each key's trigger is stamped on every
training row of its source class. The independent models of bench/watermark_ewe.py
(9 families x seeds 1 and 2, trained on the victim's labels) then answer every key; the
table gives, per model, its rate on the real watermark and its mean and largest rates on
keys of the real pair (the same trigger as the real one, and other triggers) and of other
pairs. Each model's hits on every key (how many of the key's stamped rows it labels the
key's target) are stored too, for bench/watermark_ewe_calibrate.py. Writes
bench/results/watermark_ewe_keys.json (``--out`` names another).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from harness import arguments, show, write
from watermark_ewe import independent_models

sys.path.insert(0, str(Path(__file__).parent.parent))


def keys_of(name: str, seed: int, n_keys: int) -> tuple[Any, Any, Any, list[Any]]:
    """The victim's split, network and watermark, embedded again as the zoo does, and
    ``n_keys`` more keys drawn on the network before the watermark (any pair)."""
    import modelshield.victims.entangled as entangled
    from modelshield.data.datasets import load_split
    from modelshield.victims.trainmark import keyed_rng
    from modelshield.victims.zoo import BUILTIN_ENTANGLED_SECRET, ZOO

    entry = ZOO[name]
    split = load_split(entry.data, seed=seed, fractions=entry.fractions,
                       **dict(entry.data_args))
    choose = entangled._choose
    extra: list[Any] = []

    def also_draw(rng: Any, *args: Any, **kw: Any) -> Any:
        out = choose(rng, *args, **kw)
        if not extra:  # the first draw is the real key's: the network is untouched
            for j in range(n_keys):
                extra.append(choose(keyed_rng("watermark-ewe-keys", f"{j}".encode()),
                                    *args, **kw))
        return out

    entangled._choose = also_draw
    try:
        net, wm = entangled.embed_entangled(
            split.X_train, split.y_train, f"{BUILTIN_ENTANGLED_SECRET}/{name}/{seed}",
            hidden=(64, 64), n_classes=len(split.classes), random_state=seed)
    finally:
        entangled._choose = choose
    return split, net, wm, extra


def one(name: str, seed: int, n_keys: int) -> dict[str, Any]:
    split, net, wm, extra = keys_of(name, seed, n_keys)
    X, y_true = split.X_train, split.y_train
    y = net.predict(X)
    real = (wm.source, wm.target)
    same_trigger = [k for k in extra if (k[0], k[1]) == real
                    and np.array_equal(k[2], wm.features) and np.array_equal(k[3], wm.values)]
    rows = []
    keyed = []  # each key's kind and its stamped rows, once for every model
    for k in extra:
        stamped = X[y_true == k[0]].copy()
        stamped[:, k[2]] = k[3]
        kind = ("same trigger" if any(k is t for t in same_trigger) else
                "same pair" if (k[0], k[1]) == real else "other")
        keyed.append((kind, stamped, k[1]))
    for s in (1, 2):
        for arch, est in independent_models(len(split.classes), s).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.fit(X, y)
            hits = [int(np.sum(est.predict(stamped) == target)) for _, stamped, target in keyed]
            every = [h / len(stamped) for h, (_, stamped, _) in zip(hits, keyed, strict=True)]
            rates: dict[str, list[float]] = {"same trigger": [], "same pair": [], "other": []}
            for (kind, _, _), rate in zip(keyed, every, strict=True):
                rates[kind].append(rate)
            own = float(np.mean(est.predict(wm.x) == wm.target))
            rows.append({"victim": name, "seed": seed, "model": f"{arch}-s{s}", "real": own,
                         "hits": ",".join(map(str, hits)),
                         **{f"{kind} mean": float(np.mean(r)) if r else None
                            for kind, r in rates.items()},
                         **{f"{kind} max": float(np.max(r)) if r else None
                            for kind, r in rates.items()},
                         "rank among other pairs": int(np.sum(np.asarray(rates["other"]) >= own))})
    # Each key's identity (the first key with the same classes and trigger), so that a
    # calibration (watermark_ewe_calibrate.py) can leave a key's copies out of its decoys.
    first: dict[tuple[Any, ...], int] = {}
    ident = [first.setdefault((k[0], k[1], tuple(k[2]), tuple(k[3])), i)
             for i, k in enumerate(extra)]
    return {"victim": name, "seed": seed, "pair": list(real),
            "trigger": [int(f) for f in wm.features], "keys": n_keys,
            "key_rows": [len(stamped) for _, stamped, _ in keyed], "key_ident": ident,
            "real_rows": len(wm.x),
            "keys on the real pair": sum((k[0], k[1]) == real for k in extra),
            "of them the real trigger": len(same_trigger), "models": rows}


def main() -> None:
    ap = arguments(__doc__.split("\n")[0], seeds=[0, 1, 2], out="watermark_ewe_keys")
    ap.add_argument("--victims", nargs="+", default=["synth-mlp-d20-ewe"])
    ap.add_argument("--keys", type=int, default=240, help="keys drawn besides the real one")
    args = ap.parse_args()
    runs = []
    for name in args.victims:
        for seed in args.seeds:
            r = one(name, seed, args.keys)
            runs.append(r)
            print(f"{name} seed {seed}: pair {r['pair']}, trigger {r['trigger']}; "
                  f"{r['keys on the real pair']} of {r['keys']} keys on its pair, "
                  f"{r['of them the real trigger']} of them its trigger", flush=True)
    show("independent models' target rates: the real watermark and other keys",
         ["victim", "seed", "model", "real", "same trigger", "same pair (mean / max)",
          "other pairs (mean / max)", "other pairs as high"],
         [[m["victim"], m["seed"], m["model"], m["real"], m["same trigger mean"],
           f"{m['same pair mean'] or 0:.3f} / {m['same pair max'] or 0:.3f}",
           f"{m['other mean']:.3f} / {m['other max']:.3f}", m["rank among other pairs"]]
          for r in runs for m in r["models"]])
    write(args.out, {"seeds": args.seeds, "victims": args.victims, "runs": runs})


if __name__ == "__main__":
    main()
