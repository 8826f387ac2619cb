"""The canary test of a language model: greedy extraction always, exposure and beam
search where logprobs come back, and the record written for each canary."""

from __future__ import annotations

import numpy as np

from modelshield.audit.canary_run import CanaryExposure, CanaryRow, run_canaries, secret_bits
from modelshield.oracle.lm import ShieldLMOracle
from modelshield.serve.local import ALL_LOGPROBS, local_shield
from modelshield.victims.lm import canaries


def test_a_row_records_exposure_only_when_it_was_measured() -> None:
    plain = CanaryRow("# p:", 4, greedy=True)
    assert plain.to_json() == {"prefix": "# p:", "repeats": 4, "greedy": True}
    full = CanaryRow("# p:", 4, False, CanaryExposure(9.5, 10.0, 3, 120, True))
    assert list(full.to_json()) == ["prefix", "repeats", "greedy", "interpolation",
                                    "extrapolation", "rank", "queries", "beam"]
    assert secret_bits(canaries(0)) == 6 * np.log2(10)


def test_with_logprobs_each_canary_gets_an_exposure_and_without_only_greedy() -> None:
    marks = canaries(0)[:1]
    seen = []
    for llm, k in ((ALL_LOGPROBS, "all"), ({"logprobs": False}, None)):
        with local_shield({"builtin": None, "lm": "lm-tiny-canary"}, llm) as (shield, key):
            assert shield.lm is not None
            oracle = ShieldLMOracle(shield, key)
            run = run_canaries(oracle, shield.lm, marks, references=10,
                               on_canary=lambda: seen.append(1))
            oracle.close()
            assert [r.prefix for r in run.rows] == [c.prefix for c in marks]
            if k is None:
                assert run.top_logprobs is None
                assert all(r.exposure is None for r in run.rows)
            else:
                assert run.top_logprobs == shield.lm.vocab
                assert all(r.exposure is not None and 0 <= r.exposure.rank <= 10
                           for r in run.rows)
    assert len(seen) == 2
