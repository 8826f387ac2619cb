"""The command's own small pieces: --since/--until values, and the tables' cells."""

from __future__ import annotations

import pytest

from modelshield.cli.gateway import when_arg
from modelshield.cli.render import num, q90
from modelshield.errors import ConfigError


def test_since_and_until_take_dates_times_and_days_ago() -> None:
    assert when_arg(None, "--since") is None
    assert when_arg("2026-11-01", "--since") == 1793491200.0
    assert when_arg("2026-11-01T08:00+01:00", "--since") == 1793491200.0 + 7 * 3600
    assert when_arg("30d", "--since", now=1e9) == 1e9 - 30 * 86400
    with pytest.raises(ConfigError, match="--until: 'soon' is not a date"):
        when_arg("soon", "--until")


def test_queries_to_90_show_their_range_when_it_is_not_a_point() -> None:
    assert q90({"q90": None}) == "—"
    assert q90({"q90": 1200, "q90_range": [1200, 1200]}) == "1,200"
    assert q90({"q90": 1200, "q90_range": [900, None]}) == "1,200 (900 to —)"
    assert num(None) == "—" and num(0.5, ".2f") == "0.50"
