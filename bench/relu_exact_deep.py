"""Exact extraction of two-hidden-layer ReLU networks (Carlini et al. 2020), seeds 0-4.

    python bench/relu_exact_deep.py [--seeds 0 1 2 3 4] [--shape 10 15 15] [--zoo]
                                    [--victims-only] [--signs auto|span|wiggle] [--out NAME]

Victims: networks of Carlini et al.'s 10-15-15-1 kind, trained here with scikit-learn on a
binary task (``make_classification``, 10 features), as an owner would, and served with a
float64 head that answers softmax(0, z): both probabilities to full relative precision,
as a two-logit network answers. (scikit-learn's own binary head answers 1 - p, which
rounds to exactly 0 or 1 where these networks reach |z| > 37 in the corners of the box:
no log-ratio is left there for any attack that needs one.)

Reported, per seed: units found in each layer against the truth, queries (Carlini et al.
report 2^18.5 for their networks), and the largest error of the clone's log-ratio against
the network's exact logit over 10,000 uniform points of the domain and over the test rows,
against 2^-25. Writes bench/results/relu_exact_deep.json. With ``--zoo`` the victim is the
built-in synth-mlp-d10-2l (10-15-15, 4 classes, scikit-learn's softmax head, which keeps
the log-ratios), the error is against its answers' log-ratios, and the file is
relu_exact_deep_zoo.json. ``--signs`` picks how the first layer's signs are recovered (the
span test, Canales-Martinez et al.'s neuron wiggle, or auto: the span test where its subsets
are affordable); the table then also gives the queries the wiggle took and how many of its
majority votes a certificate overturned (what the votes alone would have got wrong). ``--victims-only``
runs no attack: it writes how rarely each seed's rarest second-layer unit switches, and what
scikit-learn's own binary head answers in the box, to relu_exact_deep_victims.json.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from harness import arguments, show, write

sys.path.insert(0, str(Path(__file__).parent.parent))

from modelshield.audit import run_cell
from modelshield.audit.evaluate import uniform_probe


class OwnerNet:
    """A scikit-learn MLP's weights answered in float64 with a two-logit softmax head."""

    def __init__(self, pipeline: Any) -> None:
        self.pipe = pipeline
        scaler, mlp = pipeline[0], pipeline[-1]
        self.layers = [(w.copy(), b.copy()) for w, b in zip(mlp.coefs_, mlp.intercepts_, strict=True)]
        w, b = self.layers[0]  # the scaler folded into the first layer
        self.layers[0] = (w / scaler.scale_[:, None], b - (scaler.mean_ / scaler.scale_) @ w)
        self.classes_ = np.arange(2)

    def logit(self, x: Any) -> np.ndarray:
        h = np.asarray(x, dtype=np.float64)
        for w, b in self.layers[:-1]:
            h = np.maximum(h @ w + b, 0.0)
        w, b = self.layers[-1]
        return np.asarray((h @ w + b)[:, 0])

    def predict_proba(self, x: Any) -> np.ndarray:
        from scipy.special import expit

        z = self.logit(x)
        return np.column_stack([expit(-z), expit(z)])

    def predict(self, x: Any) -> np.ndarray:
        return np.asarray((self.logit(x) > 0).astype(np.int64))


def owner_victim(seed: int, d: int = 10, hidden: tuple[int, ...] = (15, 15)) -> Any:
    from sklearn.datasets import make_classification
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from modelshield.answer import ApiSpec
    from modelshield.victims.base import SklearnAdapter, Victim

    X, y = make_classification(3000, d, n_informative=d // 2, n_clusters_per_class=1,
                               random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = make_pipeline(StandardScaler(), MLPClassifier(
            hidden, max_iter=500, random_state=seed)).fit(X[:1500], y[:1500])
    net = OwnerNet(pipe)
    name = "owner-" + "-".join(map(str, (d, *hidden, 1)))
    spec = ApiSpec(n_features=d, classes=("0", "1"), low=X.min(axis=0), high=X.max(axis=0),
                   name=name)
    return Victim(name, SklearnAdapter(net), spec, X[1500:2250], y[1500:2250], X[2250:],
                  X[:1500], kind="mlp"), net


def main() -> None:
    ap = arguments(__doc__.split("\n")[0], seeds=[0, 1, 2, 3, 4])
    ap.add_argument("--shape", type=int, nargs="+", default=[10, 15, 15],
                    help="inputs, then the widths of the two hidden layers")
    ap.add_argument("--zoo", action="store_true",
                    help="attack the built-in synth-mlp-d10-2l (10-15-15, 4 classes, softmax "
                         "head) instead; errors are against its answers' log-ratios")
    ap.add_argument("--victims-only", action="store_true",
                    help="no attack: per seed, how rarely the rarest second-layer unit "
                         "switches, and what scikit-learn's own binary head answers in the box "
                         "(writes relu_exact_deep_victims.json)")
    ap.add_argument("--signs", choices=["auto", "span", "wiggle"], default="auto",
                    help="first-layer sign recovery (default auto: the span test where its "
                         "subsets are affordable, else the neuron wiggle)")
    ap.add_argument("--out", default=None,
                    help="name of the JSON under bench/results/ (default relu_exact_deep, or "
                         "relu_exact_deep_zoo with --zoo)")
    args = ap.parse_args()
    d, *hidden = args.shape
    if args.victims_only:
        return victims_only(args.seeds, d, tuple(hidden))
    rows = []
    for seed in args.seeds:
        if args.zoo:
            from modelshield.victims import load_victim

            v = load_victim("synth-mlp-d10-2l", seed)
            net = _Answers(v)
        else:
            v, net = owner_victim(seed, d, tuple(hidden))
        start = time.perf_counter()
        r = run_cell(v, "relu-exact-2", "full", 5_000_000, seed, uniform_points=10_000,
                     params={"signs": args.signs})
        seconds = time.perf_counter() - start
        x = uniform_probe(v, 10_000, seed + 11)
        truth = {"uniform": net.logit(x), "test": net.logit(v.X_test)}
        err: dict[str, float | None] = {}
        for where, pts in (("uniform", x), ("test", v.X_test)):
            err[where] = (float(_gap(r.clone.log_ratios(pts), truth[where]).max())
                          if r.clone is not None else None)
        worst = max((e for e in err.values() if e is not None), default=None)
        above = (int((_gap(r.clone.log_ratios(x), truth["uniform"]) > 2.0 ** -25).sum())
                 if r.clone is not None else None)
        switching = _switching(net, x)
        rows.append({
            "victim": v.name, "seed": seed, "true_units": switching,
            "first_layer": r.info.get("first_layer_units"),
            "second_layer": r.info.get("second_layer_units"), "queries": r.queries,
            "log2_queries": float(np.log2(max(r.queries, 1))), "status": r.status,
            "reason": r.reason, "fidelity_test": r.fidelity_test,
            "fidelity_uniform": r.fidelity_uniform, "max_error_uniform": err["uniform"],
            "max_error_test": err["test"], "uniform_points_above_2_pow_25": above,
            "log2_max_error": (float(np.log2(worst))
                                                              if worst else None),
            "below_2_pow_25": worst is not None and worst <= 2.0 ** -25,
            "logit_range": float(np.abs(truth["uniform"]).max()), "seconds": seconds,
            "sign_method": r.info.get("sign_method"),
            "sign_queries": r.info.get("wiggle_queries"),
            "votes_overturned": r.info.get("wiggle_votes_overturned"), "info": r.info})
        print({k: rows[-1][k] for k in ("seed", "true_units", "first_layer", "second_layer",
                                        "queries", "max_error_uniform", "max_error_test",
                                        "status", "sign_method", "sign_queries",
                                        "votes_overturned", "seconds")},
              flush=True)
    show("relu-exact-2: two-hidden-layer ReLU networks from full probabilities",
         ["victim", "seed", "units switching (1st, 2nd)", "found", "queries", "log2 q",
          "signs by", "sign queries", "votes overturned", "max err uniform", "points > 2^-25",
          "max err test", "<= 2^-25"],
         [[r["victim"], r["seed"], str(tuple(r["true_units"])),
           f"{r['first_layer']}, {r['second_layer']}", r["queries"], r["log2_queries"],
           r["sign_method"], r["sign_queries"], r["votes_overturned"], r["max_error_uniform"],
           r["uniform_points_above_2_pow_25"], r["max_error_test"],
           r["below_2_pow_25"]] for r in rows])
    write(args.out or ("relu_exact_deep_zoo" if args.zoo else "relu_exact_deep"),
          {"shape": [d, *hidden, 1], "signs": args.signs, "rows": rows,
                              "all_below_2_pow_25": all(r["below_2_pow_25"] for r in rows)})


def victims_only(seeds: list[int], d: int, hidden: tuple[int, ...]) -> None:
    """The victims themselves: the rarest second-layer unit's minority share of 10,000
    uniform points, and, with scikit-learn's binary head (1 - p), the largest |log-ratio|
    it still answers and whether it answers exactly 0 or 1 anywhere among 20,000."""
    rows = []
    for seed in seeds:
        v, net = owner_victim(seed, d, hidden)
        x = uniform_probe(v, 10_000, seed + 11)
        h = np.maximum(x @ net.layers[0][0] + net.layers[0][1], 0.0)
        on = (h @ net.layers[1][0] + net.layers[1][1] > 0).mean(axis=0)
        u = uniform_probe(v, 20_000, seed)
        p = net.pipe.predict_proba(u)[:, 1]
        with np.errstate(divide="ignore"):
            z = np.log(p) - np.log1p(-p)
        rows.append({"seed": seed, "rarest_second_layer_share": float(np.minimum(on, 1 - on)
                                                                         [(on > 0) & (on < 1)]
                                                                         .min()),
                     "sklearn_head_saturates": bool(not np.isfinite(z).all()),
                     "sklearn_head_max_abs_log_ratio": float(np.abs(z[np.isfinite(z)]).max())})
        print(rows[-1], flush=True)
    write("relu_exact_deep_victims", {"shape": [d, *hidden, 1], "rows": rows})


def _gap(clone: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Each point's largest log-ratio error."""
    diff = clone.reshape(len(clone), -1) - truth.reshape(len(truth), -1)
    return np.asarray(np.abs(diff).max(axis=1))


class _Answers:
    """A built-in victim's log-ratios, from its own answers (a softmax head keeps them)."""

    def __init__(self, victim: Any) -> None:
        self.victim = victim

    def logit(self, x: Any) -> np.ndarray:
        p = self.victim.predict(np.asarray(x)).probabilities
        return np.asarray(np.log(p[:, 1:]) - np.log(p[:, :1]))


def _switching(net: Any, x: np.ndarray) -> list[int]:
    """How many units of each hidden layer switch somewhere among the points x."""
    if isinstance(net, _Answers):
        return []
    out, h = [], x
    for w, b in net.layers[:-1]:
        pre = h @ w + b
        out.append(int(((pre > 0).any(axis=0) & (pre <= 0).any(axis=0)).sum()))
        h = np.maximum(pre, 0.0)
    return out


if __name__ == "__main__":
    main()
