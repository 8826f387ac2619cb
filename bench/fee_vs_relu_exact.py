"""ART's FunctionallyEquivalentExtraction (Jagielski et al. 2020) beside modelshield's
relu-exact, on the same one-hidden-layer ReLU networks.

    python bench/fee_vs_relu_exact.py [--seeds 0 1 2] [--timeout 300]

Victims: the owner-built scikit-learn pipelines of bench/relu_exact.py (scaling, then 16
ReLU units, 3 classes, 10 features), the smallest it reports. ART's attack is given more
than ours: the network's raw logits, from any real input (it walks far outside the data's
domain), through ``BlackBoxClassifierNeuralNetwork``; relu-exact sees the probabilities
inside the domain box, through the oracle. ART's defaults are kept. Each ART run is
stopped after ``--timeout`` seconds. A second ART run patches the float32 cast it applies to
every answer (``NUMPY_DTYPE`` in its module) to float64.

Reported per network: whether each attack returned a model, its queries, seconds, and the
largest error of the logit differences (class k minus class 0) over 5,000 uniform points of
the domain. Writes bench/results/fee_vs_relu_exact.json.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import arguments, show, write

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from relu_exact import owner_mlp

from modelshield.audit import run_cell
from modelshield.audit.evaluate import uniform_probe


class Timeout(Exception):
    pass


def logits_of(victim: Any) -> Any:
    """The pipeline's logits on raw inputs: scaling is affine, so it is still one hidden
    ReLU layer."""
    scaler, mlp = victim.model.estimator.steps[0][1], victim.model.estimator.steps[-1][1]
    (w0, w1), (b0, b1) = mlp.coefs_, mlp.intercepts_

    def f(x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - scaler.mean_) / scaler.scale_
        return np.asarray(np.maximum(z @ w0 + b0, 0.0) @ w1 + b1)
    return f


def run_fee(victim: Any, seed: int, timeout: int, x: np.ndarray,
            float64: bool = False) -> dict[str, Any]:
    import art.attacks.extraction.functionally_equivalent_extraction as fee_module
    from art.attacks.extraction import FunctionallyEquivalentExtraction
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    # ART casts every answer to float32 (art.config.ART_NUMPY_DTYPE) before its finite
    # differences; the float64 variant patches that one name, to test whether the cast is
    # what breaks its critical-point search.
    fee_module.NUMPY_DTYPE = np.float64 if float64 else np.float32

    f = logits_of(victim)
    calls = [0]

    def predict(inputs: np.ndarray) -> np.ndarray:
        calls[0] += len(inputs)
        return f(inputs)

    d, c = victim.spec.n_features, victim.spec.n_classes
    clf = BlackBoxClassifierNeuralNetwork(predict, input_shape=(d,), nb_classes=c)
    np.random.seed(seed)  # noqa: NPY002 (ART draws its search lines from the global generator)
    fee = FunctionallyEquivalentExtraction(clf, num_neurons=16)

    def stop(*_: Any) -> None:
        raise Timeout

    signal.signal(signal.SIGALRM, stop)
    signal.alarm(timeout)
    start = time.perf_counter()
    out: dict[str, Any] = {"attack": "ART FunctionallyEquivalentExtraction"
                           + (", float64 (patched)" if float64 else "")}
    try:
        extracted = fee.extract(victim.pool[:100].astype(np.float32))
        got = extracted.predict(x.astype(np.float32)).astype(np.float64)
        truth = f(x)
        err = np.abs((got[:, 1:] - got[:, :1]) - (truth[:, 1:] - truth[:, :1])).max()
        out.update(status="ok", max_error=float(err))
    except Timeout:
        out.update(status=f"stopped after {timeout} s",
                   critical_points=len(fee.critical_points))
    except Exception as exc:  # the attack's own refusal is the result
        out.update(status=f"{type(exc).__name__}: {str(exc)[:160]}")
    finally:
        signal.alarm(0)
    out.update(queries=calls[0], seconds=time.perf_counter() - start)
    return out


def main() -> None:
    parser = arguments(__doc__, seeds=[0, 1, 2])
    parser.add_argument("--timeout", type=int, default=300)
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        v = owner_mlp(16, 3, 10, seed)
        x = uniform_probe(v, 5000, seed + 11)
        truth = logits_of(v)(x)
        start = time.perf_counter()
        r = run_cell(v, "relu-exact", "full", 1_000_000, seed)
        ours = {"attack": "modelshield relu-exact", "status": r.status, "queries": r.queries,
                "seconds": time.perf_counter() - start,
                "max_error": float(np.abs(r.clone.log_ratios(x) - (
                    truth[:, 1:] - truth[:, :1])).max()) if r.clone else None}
        for row in (ours, run_fee(v, seed, args.timeout, x),
                    run_fee(v, seed, args.timeout, x, float64=True)):
            rows.append({"seed": seed, "network": "10-16-3", **row})
            print(rows[-1], flush=True)
    show("one-hidden-layer ReLU networks (10-16-3, owner-built pipelines)",
         ["seed", "attack", "status", "queries", "seconds", "max logit-difference error"],
         [[r["seed"], r["attack"], r["status"], r["queries"], r["seconds"], r.get("max_error")]
          for r in rows])
    write("fee_vs_relu_exact", {"seeds": args.seeds, "timeout": args.timeout, "rows": rows})


if __name__ == "__main__":
    main()
