from __future__ import annotations

import pytest

from modelshield.victims import Victim, load_victim

# Built models come from the build cache (victims/cache.py): ``$MODELSHIELD_CACHE``, else
# ``~/.cache/modelshield``, shared with the CLI and CI. Each artifact is named by the code
# that builds it and the library versions, so a stale model is never loaded, and the second
# run of the suite builds nothing. Tests that check building itself use a folder of their own.


@pytest.fixture(scope="session")
def victims() -> dict[str, Victim]:
    names = ["breast-cancer-lr", "digits-lr", "digits-mlp", "wine-tree", "digits-tree",
             "synth-lr-d10"]
    return {n: load_victim(n) for n in names}


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_worker() -> None:
    """Under ``make test`` two workers share the machine's cores: each computes on one thread
    (PyTorch, and the OpenMP and BLAS pools of scikit-learn and NumPy), as the audit's
    process pool does, instead of every worker spreading over every core."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)
