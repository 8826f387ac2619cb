"""Our knockoff and active attacks beside IBM ART 1.20.1 on the same work, in one run.

    pip install -e '.[bench]'   # adversarial-robustness-toolbox==1.20.1
    python bench/knockoff_vs_art.py [--seeds 0 1 2] [--budgets 100 300 1000 3000]

Victim: the built-in digits MLP behind full probabilities. Queries: the attacker's natural
pool. Student: the same architecture for every method (64-128-10 ReLU MLP), trained with Adam
for the same number of epochs at each budget. ART's victim is an ART BlackBoxClassifier whose
predict calls our LocalOracle, so its queries are counted by the same oracle as ours.
ART's KnockoffNets "adaptive" needs categories for its bandit; the attacker's pool has no
labels, so its 10 k-means clusters serve. The victim is fixed (seed 0); each seed changes
the queries and the students. Prints mean fidelity per budget and ours/ART ratios;
writes bench/results/knockoff_vs_art.json.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

import numpy as np
import torch
from _common import show, write
from sklearn.cluster import KMeans

from modelshield.attacks import ATTACKS
from modelshield.attacks._students import epochs_for
from modelshield.audit.evaluate import agreement
from modelshield.defenses import parse_policy
from modelshield.oracle import LocalOracle
from modelshield.victims import Victim, load_victim

HIDDEN = (128,)
EPOCHS = 200


def ours(victim: Victim, name: str, budget: int, seed: int, **kw: Any) -> tuple[float, int]:
    oracle = LocalOracle(victim, parse_policy("full"), budget=budget)
    e = ATTACKS[name](random_state=seed, hidden=HIDDEN, epochs=EPOCHS, **kw).run(
        oracle, budget, pool=victim.pool)
    return agreement(e.clone, victim, victim.X_test), oracle.used


def art(victim: Victim, method: str, budget: int, seed: int) -> tuple[float, int]:
    from art.attacks.extraction import CopycatCNN, KnockoffNets
    from art.estimators.classification import BlackBoxClassifier, PyTorchClassifier

    oracle = LocalOracle(victim, parse_policy("full"), budget=budget)
    c = victim.spec.n_classes
    black_box = BlackBoxClassifier(lambda x: oracle.query(x).probabilities, (64,), c,
                                   clip_values=(0.0, 16.0))
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, HIDDEN[0]), torch.nn.ReLU(),
                              torch.nn.Linear(HIDDEN[0], c))
    mean, std = victim.pool.mean(axis=0), np.maximum(victim.pool.std(axis=0), 1e-3)
    thief = PyTorchClassifier(net, loss=torch.nn.CrossEntropyLoss(),
                              optimizer=torch.optim.Adam(net.parameters(), lr=3e-3,
                                                         weight_decay=1e-4),
                              input_shape=(64,), nb_classes=c, clip_values=(0.0, 16.0),
                              preprocessing=(mean.astype(np.float32), std.astype(np.float32)))
    epochs = epochs_for(budget, EPOCHS)
    x = victim.pool.astype(np.float32)
    np.random.seed(seed)  # noqa: NPY002  (ART samples with the global generator)
    if method == "copycat":
        attack = CopycatCNN(black_box, batch_size_fit=64, batch_size_query=256,
                            nb_epochs=epochs, nb_stolen=budget, use_probability=False)
        stolen = attack.extract(x, thieved_classifier=thief)
    else:
        strategy = "random" if method == "knockoff-random" else "adaptive"
        attack = KnockoffNets(black_box, batch_size_fit=64, batch_size_query=256,
                              nb_epochs=epochs, nb_stolen=budget, sampling_strategy=strategy,
                              use_probability=True, reward="all")
        y = None
        if strategy == "adaptive":
            clusters = KMeans(c, n_init=4, random_state=seed).fit_predict(victim.pool)
            y = np.eye(c)[clusters].astype(np.float32)
        stolen = attack.extract(x, y=y, thieved_classifier=thief)
    pred = np.argmax(stolen.predict(victim.X_test.astype(np.float32)), axis=1)
    return float(np.mean(pred == victim.predict_labels(victim.X_test))), oracle.used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 300, 1000, 3000])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    victim = load_victim("digits-mlp", 0)
    methods = ["ours_knockoff_soft", "ours_active_margin", "art_copycat", "art_knockoff-random",
               "art_knockoff-adaptive"]
    runs = []
    for seed in args.seeds:
        for budget in args.budgets:
            run: dict[str, Any] = {"seed": seed, "budget": budget}
            run["ours_knockoff_soft"], _ = ours(victim, "knockoff", budget, seed,
                                                source="pool", labels="soft")
            run["ours_active_margin"], _ = ours(victim, "active", budget, seed,
                                                strategy="margin", labels="soft")
            for method in ("copycat", "knockoff-random", "knockoff-adaptive"):
                run[f"art_{method}"], run[f"art_{method}_queries"] = art(victim, method,
                                                                         budget, seed)
            runs.append(run)
            print(run, flush=True)
    rows = [{"budget": b, **{m: float(np.mean([r[m] for r in runs if r["budget"] == b]))
                             for m in methods}} for b in args.budgets]
    show(f"digits MLP, natural pool, full probabilities: test fidelity, mean of seeds "
         f"{args.seeds} (ours / ART ratios)",
         ["budget", "ours knockoff", "ours active", "ART copycat", "ART knockoff rand",
          "ART knockoff adapt", "knockoff/ART rand", "active/ART adapt"],
         [[r["budget"], r["ours_knockoff_soft"], r["ours_active_margin"], r["art_copycat"],
           r["art_knockoff-random"], r["art_knockoff-adaptive"],
           r["ours_knockoff_soft"] / r["art_knockoff-random"],
           r["ours_active_margin"] / r["art_knockoff-adaptive"]] for r in rows])
    best_art = max(max(r["art_copycat"], r["art_knockoff-random"], r["art_knockoff-adaptive"])
                   for r in rows if r["budget"] == max(args.budgets))
    reach = [r["budget"] for r in rows
             if max(r["ours_knockoff_soft"], r["ours_active_margin"]) >= best_art]
    print(f"ART's best fidelity at {max(args.budgets)} queries: {best_art:.4f}; "
          f"ours first reaches it at: {min(reach) if reach else 'not within the budgets'}")
    write("knockoff_vs_art", {"seeds": args.seeds, "runs": runs, "rows": rows,
                              "art_best": best_art,
                              "ours_budget_to_reach_art_best": min(reach) if reach else None})


if __name__ == "__main__":
    main()
