"""ShieldOracle: query a model through the full Shield, in-process, with an API key.

The same Shield object runs behind the HTTP gateway, so an audit run through this oracle
sees exactly what a customer of that tier would: the same limits, detectors, output policy
and audit log.
"""

from __future__ import annotations

from typing import Any

from modelshield.answer import Answer, FloatArray
from modelshield.errors import Blocked, Denied
from modelshield.oracle.base import BaseOracle


class ShieldOracle(BaseOracle):
    """Send queries through ``shield.handle`` as the holder of ``api_key``."""

    def __init__(self, shield: Any, api_key: str, *, client_ip: str = "127.0.0.1",
                 **kwargs: Any) -> None:
        super().__init__(shield.spec, **kwargs)
        self.shield = shield
        self.api_key = api_key
        self.client_ip = client_ip
        self.first_flag: tuple[int, str] | None = None
        try:
            self.max_batch = int(shield.account(api_key)["max_batch"])
        except Denied:
            pass  # a refused key: the first query says so

    def _answer(self, inputs: FloatArray) -> Answer:
        """One batch through the Shield; remembers the query count at the first flag."""
        try:
            answer, decision = self.shield.handle(self.api_key, inputs, self.client_ip)
        except Denied as exc:
            detector = exc.headers.get("X-Modelshield-Flag")
            if detector and self.first_flag is None:  # denied on the query that tripped it
                self.first_flag = (self.used + len(inputs), detector)
            raise Blocked(exc, self.used) from None
        if decision.flags and self.first_flag is None:
            self.first_flag = (self.used + len(inputs), decision.flags[0].detector)
        return answer  # type: ignore[no-any-return]
