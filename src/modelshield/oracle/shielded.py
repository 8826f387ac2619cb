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


class Pacer:
    """A low-and-slow attacker: a request refused by a rate limit (429) waits out its
    ``Retry-After`` and goes again, on ``clock`` (a
    :class:`~modelshield.defenses.limits_memory.VirtualClock` in the audit, so the wait
    is counted, not slept). ``waited`` is the total. A request the limit can never let
    through (bigger than the window) is refused as before."""

    TRIES = 64  # waits per request before it is taken as one no window lets through

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.waited = 0.0

    def handle(self, shield: Any, key: str, rows: FloatArray, ip: str) -> Any:
        for _ in range(self.TRIES):
            try:
                return shield.handle(key, rows, ip)
            except Denied as exc:
                if exc.status != 429 or exc.code != "rate_limited":
                    raise
                wait = max(1.0, float(exc.headers.get("Retry-After", "1")))
                self.clock.advance(wait)
                self.waited += wait
        return shield.handle(key, rows, ip)  # still refused: a request no window lets through


def _handle(shield: Any, key: str, rows: FloatArray, ip: str, pacer: Pacer | None) -> Any:
    return shield.handle(key, rows, ip) if pacer is None else pacer.handle(shield, key, rows, ip)


class ShieldOracle(BaseOracle):
    """Send queries through ``shield.handle`` as the holder of ``api_key``."""

    def __init__(self, shield: Any, api_key: str, *, client_ip: str = "127.0.0.1",
                 pacer: Pacer | None = None, **kwargs: Any) -> None:
        super().__init__(shield.spec, **kwargs)
        self.shield, self.pacer = shield, pacer
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
            answer, decision = _handle(self.shield, self.api_key, inputs, self.client_ip,
                                       self.pacer)
        except Denied as exc:
            detector = exc.headers.get("X-Modelshield-Flag")
            if detector and self.first_flag is None:  # denied on the query that tripped it
                self.first_flag = (self.used + len(inputs), detector)
            raise Blocked(exc, self.used) from None
        if decision.flags and self.first_flag is None:
            self.first_flag = (self.used + len(inputs), decision.flags[0].detector)
        return answer  # type: ignore[no-any-return]


class SpreadOracle(BaseOracle):
    """An attacker who knows the defense: the budget spread over several keys, natural
    rows mixed into the stream, or both, through one Shield in-process.

    keys: (api_key, client_ip) pairs; each key sends about ``budget / len(keys)`` rows
    (attack and natural rows together, in requests no bigger than that), then the next
    one takes over. A key that is
    refused (suspended, throttled) hands its request to the next: the attacker sees the
    refusal and moves on. Only when every key is refused is the attack blocked.
    mix: the share of the stream that is natural rows from ``natural`` (the attacker's
    pool), sent with the attack's rows in random order and thrown away: they dilute what
    the detectors see and count against the budget.
    pacer: waits out each rate limit instead of moving to the next key (low and slow).
    """

    def __init__(self, shield: Any, keys: list[tuple[str, str]], *, mix: float = 0.0,
                 natural: FloatArray | None = None, seed: int = 0,
                 pacer: Pacer | None = None, **kwargs: Any) -> None:
        import numpy as np

        super().__init__(shield.spec, **kwargs)
        self.pacer = pacer
        if not keys:
            raise ValueError("SpreadOracle needs at least one key")
        if mix > 0 and (natural is None or len(natural) == 0):
            raise ValueError("mixing natural rows needs the attacker's natural pool")
        self.shield, self.keys, self.mix = shield, keys, mix
        self.natural = natural
        self.rng = np.random.default_rng(seed)
        self.current, self.sent_by_key = 0, [0] * len(keys)
        self.first_flag: tuple[int, str] | None = None
        self.natural_rows = 0
        try:
            self.max_batch = int(shield.account(keys[0][0])["max_batch"])
        except Denied:
            pass
        if self.quota is not None:  # no request bigger than one key's share
            self.max_batch = min(self.max_batch or self.quota, self.quota)
        if mix > 0 and self.max_batch:  # room in each request for the natural rows
            self.max_batch = max(1, int(self.max_batch * (1 - mix)))

    @property
    def quota(self) -> int | None:
        return None if self.budget is None else -(-self.budget // len(self.keys))

    @property
    def remaining(self) -> int:
        """The attack's share of what is left: the natural rows mixed in are paid for from
        the same budget, so an attack that sizes its queries by this leaves them room."""
        left = super().remaining
        return left if self.mix == 0 or self.budget is None else int(left * (1 - self.mix))

    def _answer(self, inputs: FloatArray) -> Answer:
        import numpy as np

        extra = 0
        if self.mix > 0 and self.natural is not None:
            want = round(len(inputs) * self.mix / (1 - self.mix))
            room = (super().remaining - len(inputs)) if self.budget is not None else want
            extra = max(0, min(want, room))
        rows = inputs
        order = np.arange(len(inputs))
        if extra and self.natural is not None:
            nat = self.natural[self.rng.integers(0, len(self.natural), extra)]
            rows = np.concatenate([inputs, nat])
            order = self.rng.permutation(len(rows))
            rows = rows[order]
        while True:
            key, ip = self.keys[self.current]
            try:
                answer, decision = _handle(self.shield, key, rows, ip, self.pacer)
                break
            except Denied as exc:
                detector = exc.headers.get("X-Modelshield-Flag")
                if detector and self.first_flag is None:
                    self.first_flag = (self.used + len(inputs), detector)
                if self.current + 1 >= len(self.keys):
                    raise Blocked(exc, self.used) from None
                self.current += 1
        if decision.flags and self.first_flag is None:
            self.first_flag = (self.used + len(inputs), decision.flags[0].detector)
        self.sent_by_key[self.current] += len(rows)
        quota = self.quota
        if quota is not None and self.sent_by_key[self.current] >= quota and \
                self.current + 1 < len(self.keys):
            self.current += 1
        self._used += extra  # the natural rows were paid for too
        self.natural_rows += extra
        keep = np.argsort(order)[: len(inputs)] if extra else order
        out: Answer = answer.take(keep)
        return out
