"""Each model format an owner serves, copied over HTTP: one model a format, served by one
gateway, attacked by a knockoff from the owner-side CLI's path (``modelshield attack --target
... --model-file ... --data ...``: HttpOracle, the clone scored against the owner's file on
the owner's test rows).

    python bench/formats.py [--budget 300] [--seed 0] [--mlserver .venv-mlserver/bin/mlserver]

The task: 2,000 rows of scikit-learn's make_classification (10 features, 3 classes), split
train 1,000 / the attacker's pool 500 / test 500. Formats: a scikit-learn forest (joblib,
the reference), XGBoost (XGBClassifier in joblib; its booster as .json and .ubj), LightGBM
(LGBMClassifier in joblib; its booster as .txt), ONNX (a scikit-learn logistic pipeline
through skl2onnx) and TorchScript (a small ReLU network). With --mlserver, the XGBoost
and LightGBM boosters are also served by MLServer's runtimes behind the same gateway
(``model.upstream``), and the clone is scored against the owner's file.

The gateway runs in its own process (uvicorn, one worker), one tier, full probabilities;
the knockoff draws its queries from the pool and trains extra trees on the answers. Time is
the attack's wall time (queries and training). Writes bench/results/formats.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import yaml
from _load import free_port, server, wait_ready
from harness import arguments, report
from sklearn.datasets import make_classification

sys.path.insert(0, str(Path(__file__).parent.parent))

from modelshield.audit.evaluate import run_cell
from modelshield.oracle import HttpOracle
from modelshield.store import AuditStore
from modelshield.victims.loaders import victim_from_files

Builder = Callable[[Path, np.ndarray, np.ndarray, int], None]


def _forest(path: Path, X: np.ndarray, y: np.ndarray, seed: int) -> None:
    from sklearn.ensemble import RandomForestClassifier

    joblib.dump(RandomForestClassifier(100, random_state=seed).fit(X, y), path)


def _xgb(path: Path, X: np.ndarray, y: np.ndarray, seed: int) -> None:
    import xgboost as xgb

    model = xgb.XGBClassifier(n_estimators=100, max_depth=4, n_jobs=1, random_state=seed)
    model.fit(X, y)
    joblib.dump(model, path) if path.suffix == ".joblib" else model.save_model(path)


def _lgb(path: Path, X: np.ndarray, y: np.ndarray, seed: int) -> None:
    import lightgbm as lgb

    model = lgb.LGBMClassifier(n_estimators=100, num_leaves=15, n_jobs=1, verbose=-1,
                               random_state=seed).fit(X, y)
    joblib.dump(model, path) if path.suffix == ".joblib" else model.booster_.save_model(path)


def _onnx(path: Path, X: np.ndarray, y: np.ndarray, seed: int) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)
    path.write_bytes(to_onnx(model, X[:1].astype(np.float32),
                             options={"zipmap": False}).SerializeToString())


def _torchscript(path: Path, X: np.ndarray, y: np.ndarray, seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    mean, std = X.mean(0), X.std(0)
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, int(y.max()) + 1))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xt = torch.as_tensor((X - mean) / std, dtype=torch.float32)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), torch.as_tensor(y)).backward()
        opt.step()
    scale = torch.nn.Linear(X.shape[1], X.shape[1])  # the standardizing step, in the file
    with torch.no_grad():
        scale.weight.copy_(torch.diag(torch.as_tensor(1 / std, dtype=torch.float32)))
        scale.bias.copy_(torch.as_tensor(-mean / std, dtype=torch.float32))
    torch.jit.script(torch.nn.Sequential(scale, *net).eval()).save(str(path))


FORMATS: dict[str, tuple[str, Builder]] = {
    "sklearn-forest": (".joblib", _forest),
    "xgboost-sklearn": (".joblib", _xgb),
    "xgboost-json": (".json", _xgb),
    "xgboost-ubj": (".ubj", _xgb),
    "lightgbm-sklearn": (".joblib", _lgb),
    "lightgbm-txt": (".txt", _lgb),
    "onnx": (".onnx", _onnx),
    "torchscript": (".pt", _torchscript),
}
MLSERVER = {"mlserver-xgboost": ("xgboost-json", "mlserver_xgboost.XGBoostModel",
                                 "predict_proba"),
            "mlserver-lightgbm": ("lightgbm-txt", "mlserver_lightgbm.LightGBMModel", "predict")}


@contextmanager
def mlserver(binary: str, folder: Path, files: dict[str, Path]) -> Iterator[str]:
    """MLServer serving the XGBoost and LightGBM boosters with its runtimes."""
    for name, (source, runtime, _) in MLSERVER.items():
        (folder / name).mkdir()
        target = folder / name / files[source].name
        target.write_bytes(files[source].read_bytes())
        (folder / name / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": runtime,
            "parameters": {"uri": f"./{target.name}"}}))
    port = free_port()
    (folder / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "host": "127.0.0.1", "parallel_workers": 0}))
    proc = subprocess.Popen([binary, "start", str(folder)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for name in MLSERVER:
            wait_ready(f"http://127.0.0.1:{port}/v2/models/{name}/ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(20)


def owner_files(folder: Path, seed: int) -> tuple[dict[str, Path], Path, np.ndarray]:
    """One model file a format and the owner's data file; the domain's rows."""
    X, y = make_classification(2000, 10, n_informative=6, n_redundant=2, n_classes=3,
                               n_clusters_per_class=2, class_sep=1.2, random_state=seed)
    files = {}
    for name, (suffix, build) in FORMATS.items():
        files[name] = folder / f"{name}{suffix}"
        build(files[name], X[:1000], y[:1000], seed)
    data = folder / "data.npz"
    np.savez(data, X_test=X[1500:], y_test=y[1500:], pool=X[1000:1500], low=X.min(0),
             high=X.max(0))
    return files, data, X


def attack_each(url: str, key: str, served: dict[str, Path], data: Path, budget: int,
                seed: int) -> list[dict[str, Any]]:
    """The knockoff on each served model, scored against its owner's file."""
    rows = []
    for name, file in served.items():
        victim = victim_from_files(file, data, name)
        start = time.perf_counter()
        with closing(HttpOracle(url, key, model=name)) as oracle:
            result = run_cell(victim, "knockoff", "full", budget, seed, 1.0,
                              {"source": "pool", "student": "forest"}, oracle=oracle)
        seconds = time.perf_counter() - start
        row = {"format": name, "file": file.name, "status": result.status,
               "queries": result.queries, "fidelity_test": result.fidelity_test,
               "fidelity_uniform": result.fidelity_uniform, "clone_accuracy":
               result.accuracy, "victim_accuracy": float(np.mean(
                   victim.predict_labels(victim.X_test) == victim.y_test)),
               "seconds": seconds}
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    ap = arguments(__doc__, seed=0, out="formats")
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--mlserver", default=None, help="the mlserver command (its venv has "
                    "the XGBoost and LightGBM runtimes)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="formats-") as tmp:
        folder = Path(tmp)
        files, data, X = owner_files(folder, args.seed)
        contract = {"classes": ["0", "1", "2"], "low": X.min(0).tolist(),
                    "high": X.max(0).tolist()}
        models = [{"file": str(p), "name": n, **contract} for n, p in files.items()]
        served = dict(files)
        with _maybe_mlserver(args.mlserver, folder / "mlserver", files) as upstream:
            if upstream:
                for name, (source, _, output) in MLSERVER.items():
                    models.append({"upstream": upstream, "name": name,
                                   "upstream_output": output, **contract})
                    served[name] = files[source]
            audit_url = f"sqlite:///{tmp}/audit.db"
            (folder / "gw.yaml").write_text(yaml.safe_dump({
                "models": models, "audit_url": audit_url,
                "tiers": {"t": {"max_batch": 1000}}}))
            key = AuditStore(audit_url).create_key("t")[0]
            port = free_port()
            with server("modelshield.serve.main:app", port,
                        env={"MODELSHIELD_CONFIG": str(folder / "gw.yaml")}):
                rows = attack_each(f"http://127.0.0.1:{port}", key, served, data,
                                   args.budget, args.seed)
    report(args.out, {"seed": args.seed, "budget": args.budget, "attack": "knockoff",
                      "params": {"source": "pool", "student": "forest"}, "rows": rows},
           [(f"knockoff over HTTP, {args.budget} pool queries, scored on the owner's "
             "500 test rows", ["format", "status", "queries", "fidelity (test)",
                               "fidelity (uniform)", "clone acc", "victim acc", "s"],
             [[r["format"], r["status"], r["queries"], r["fidelity_test"],
               r["fidelity_uniform"], r["clone_accuracy"], r["victim_accuracy"],
               r["seconds"]] for r in rows])])


@contextmanager
def _maybe_mlserver(binary: str | None, folder: Path,
                    files: dict[str, Path]) -> Iterator[str | None]:
    if binary is None:
        yield None
        return
    folder.mkdir()
    with mlserver(binary, folder, files) as url:
        yield url


if __name__ == "__main__":
    main()
