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
