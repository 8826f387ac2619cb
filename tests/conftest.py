from __future__ import annotations

import pytest

from modelshield.victims import Victim, load_victim


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Build the zoo once per session, in a temporary cache (never the user's)."""
    import os

    os.environ["MODELSHIELD_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def victims() -> dict[str, Victim]:
    names = ["breast-cancer-lr", "digits-lr", "digits-mlp", "wine-tree", "digits-tree",
             "synth-lr-d10"]
    return {n: load_victim(n) for n in names}
