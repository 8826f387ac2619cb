"""A model behind a one-tier Shield in this process, its audit log in a temporary SQLite
file: what the in-process language-model and chat commands query, through the same
stages a gateway runs."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

from modelshield.defenses.shield import Shield
from modelshield.serve.factory import build_shield

# A tier that lets every logprob out: the attacker's best case.
ALL_LOGPROBS: Final[Mapping[str, Any]] = {"max_top_logprobs": 1 << 20}


@contextmanager
def local_shield(model: Mapping[str, Any], llm: Mapping[str, Any] | None = None
                 ) -> Iterator[tuple[Shield, str]]:
    """A Shield serving ``model`` (a config's ``model:``) with one tier, ``open``, whose
    ``llm:`` settings are ``llm``; and a key of that tier. Closed on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        shield = build_shield({"model": dict(model), "audit_url": f"sqlite:///{tmp}/audit.db",
                               "tiers": {"open": {"llm": dict(llm or {})}}})
        try:
            yield shield, shield.store.create_key("open")[0]
        finally:
            shield.close()
