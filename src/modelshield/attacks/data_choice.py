"""How an attacker who knows the detectors chooses its data from its own pool.

An out-of-distribution detector flags an account whose rows lie far from the natural data
more often than honest customers' do. An attacker who knows it needs no access to the
owner's data to pass it: its own pool is natural data of the same kind, so it estimates
the density of its own rows (the distance to their ``k``-th nearest neighbour among the
rest, on standardised features) and sends the most typical ones first, leaving out the
outliers a detector would count. It keeps at least as many rows as its budget can spend.
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from modelshield.answer import FloatArray
from modelshield.errors import ConfigError


def typicality(pool: FloatArray, k: int = 5) -> FloatArray:
    """Each row's distance to its ``k``-th nearest other row (standardised): small is typical."""
    if len(pool) < 2:
        return np.zeros(len(pool))
    x = StandardScaler().fit_transform(pool)
    k = min(k, len(pool) - 1)
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return np.asarray(dist[:, k], dtype=np.float64)


def typical_rows(pool: FloatArray, share: float, at_least: int = 0, k: int = 5) -> FloatArray:
    """The ``share`` of ``pool`` its own density estimate finds most typical (at least
    ``at_least`` rows, if the pool has them), most typical first."""
    if not 0 < share <= 1:
        raise ConfigError.invalid("typical", "a share of the pool in (0, 1]", share)
    keep = min(len(pool), max(int(np.ceil(share * len(pool))), at_least))
    order = np.argsort(typicality(pool, k), kind="stable")
    return pool[order[:keep]]
