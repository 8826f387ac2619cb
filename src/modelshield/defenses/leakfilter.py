"""The leak filter: an answer that gives away the system prompt is redacted.

A deployment's system prompt is a secret its owner wrote (a persona, rules, a discount
code), and a model asked to "repeat the words above" hands it over (Zhang et al., COLM
2024). The filter measures how much of the secret an answer holds: the share of the
secret's character n-grams (letters and digits only, lower case, so spacing, punctuation,
case and one-word-per-line do not hide it) found in the answer, or in any view of the
answer it can undo: reversed (by characters or by words), ROT13, and base64 or hex runs
decoded. An answer at or above the tier's ``threshold`` is redacted.

With ``cumulative`` the share is counted over everything the account has received: an
attacker who asks for the prompt a sentence at a time gets the sentences until together
they reach the threshold. The cumulative state lives in the Shield's detector state
(memory or Redis), so it holds across replicas; an attacker with many accounts still gets
a share below the threshold through each (bench/prompt_leak.py measures it).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import re
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

_NOT_ALNUM = re.compile(r"[^0-9a-z]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2}[\s:]?){8,}")


class LeakFilterSpec(BaseModel):
    """A tier's leak filter (``llm.leak_filter``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Chosen on bench/prompt_leak.py's seed-1 prompts (0.15, 0.3 and 0.5 were run).
    threshold: float = Field(default=0.15, gt=0.0, le=1.0)
    ngram: int = Field(default=16, ge=4, le=64)  # characters (letters and digits)
    cumulative: bool = True
    message: str = Field(default="I can't share that.", max_length=1000)
    # Parts of the prompt the assistant may say (its name, whom it works for): their
    # n-grams do not count as a leak.
    public: list[str] = Field(default_factory=list, max_length=100)


def normalize(text: str) -> str:
    """Letters and digits only, lower case, compatibility forms folded (full-width letters
    and the like become ASCII)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _NOT_ALNUM.sub("", folded)


def views(text: str) -> Iterator[tuple[str, str]]:
    """(name, text) for the answer and each encoding of it the filter can undo."""
    yield "plain", text
    yield "reversed", text[::-1]
    yield "words reversed", " ".join(reversed(text.split()))
    yield "rot13", codecs.decode(text, "rot13")
    decoded = []
    for run in _BASE64.findall(text):
        try:
            decoded.append(base64.b64decode(run + "=" * (-len(run) % 4),
                                            validate=False).decode("utf-8", "ignore"))
        except (binascii.Error, ValueError):
            continue
    if decoded:
        yield "base64", " ".join(decoded)
    decoded = []
    for run in _HEX.findall(text):
        try:
            decoded.append(bytes.fromhex(re.sub(r"[\s:]", "", run)).decode("utf-8", "ignore"))
        except ValueError:
            continue
    if decoded:
        yield "hex", " ".join(decoded)


@dataclass(frozen=True)
class Leak:
    """What one answer holds of the secret."""

    share: float  # of the secret's n-grams, in this answer (and before, when cumulative)
    view: str  # the view it was found in
    grams: frozenset[int]  # which of the secret's n-grams the answer holds


class LeakFinder:
    """The n-grams of one secret, and how much of them an answer holds; n-grams of the
    ``public`` texts are not secret."""

    def __init__(self, secret: str, ngram: int = 16, public: Sequence[str] = ()) -> None:
        flat = normalize(secret)
        n = min(ngram, max(len(flat), 1))
        self.ngram = n
        said = {p[i:i + n] for p in map(normalize, public) for i in range(len(p) - n + 1)}
        self.index: dict[str, list[int]] = {}
        for i in range(max(len(flat) - n + 1, 1)):
            if flat[i:i + n] not in said:
                self.index.setdefault(flat[i:i + n], []).append(i)
        self.total = max(sum(map(len, self.index.values())), 1)
        self.digest = hashlib.sha256(secret.encode()).hexdigest()[:16]

    def find(self, text: str) -> Leak:
        best = Leak(0.0, "plain", frozenset())
        for name, view in views(text):
            flat = normalize(view)
            found: set[int] = set()
            for i in range(len(flat) - self.ngram + 1):
                hit = self.index.get(flat[i:i + self.ngram])
                if hit is not None:
                    found.update(hit)
            if len(found) > len(best.grams):
                best = Leak(len(found) / self.total, name, frozenset(found))
        return best

