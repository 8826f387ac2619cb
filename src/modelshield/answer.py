"""Value types that cross the oracle: what the attacker sends and what comes back.

An :class:`Answer` holds what the output policy let out and nothing more. Arrays follow
scikit-learn's shapes: ``n`` rows (one per query), ``c`` classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class Prediction:
    """The model's full output for a batch, before any output policy.

    probabilities: (n, c) class probabilities.
    node_ids: (n,) for trees, the node where the input's path ended (a leaf, or an internal
        node when a tested feature was missing), else ``None``.
    node_counts: (n, c) for trees, the training samples of each class at that node.
    """

    probabilities: FloatArray
    node_ids: IntArray | None = None
    node_counts: FloatArray | None = None

    @property
    def labels(self) -> IntArray:
        return np.asarray(np.argmax(self.probabilities, axis=1), dtype=np.int64)


@dataclass(frozen=True)
class Answer:
    """What one batch of queries returned to the caller.

    labels: (n,) index of the top-1 class, always present.
    probabilities: (n, c) scores where the policy lets them out, else ``None``; entries the
        policy withholds (top-k) are NaN.
    confidence: (n,) one score per row (the BigML-style leaf confidence), else ``None``.
    leaf_ids: (n,) an opaque identifier of the tree node that answered, else ``None``.
    policy: name of the output policy that shaped the answer.
    """

    labels: IntArray
    probabilities: FloatArray | None = None
    confidence: FloatArray | None = None
    leaf_ids: IntArray | None = None
    policy: str = "full"

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def has_full_probabilities(self) -> bool:
        """True when every class score of every row is revealed."""
        return self.probabilities is not None and not np.isnan(self.probabilities).any()

    def take(self, index: NDArray[np.intp] | slice) -> Answer:
        """The rows at ``index`` as a new Answer."""

        def sub(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return Answer(
            labels=self.labels[index],
            probabilities=sub(self.probabilities),
            confidence=sub(self.confidence),
            leaf_ids=sub(self.leaf_ids),
            policy=self.policy,
        )


@dataclass(frozen=True)
class ApiSpec:
    """What a customer of the API is told about it: its public input/output contract.

    n_features: input width.
    classes: the class names, in the order of the probability columns.
    low, high: (d,) the documented range of each input feature (the domain box).
    accepts_missing: whether a feature may be left out (NaN), as BigML's API allowed.
    integer_features: whether inputs are documented as integers (pixel counts, say).
    """

    n_features: int
    classes: tuple[str, ...]
    low: FloatArray
    high: FloatArray
    accepts_missing: bool = False
    integer_features: bool = False
    name: str = "model"
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def uniform(self, n: int, rng: np.random.Generator) -> FloatArray:
        """``n`` points drawn uniformly from the domain box."""
        return rng.uniform(self.low, self.high, size=(n, self.n_features))


@dataclass
class LMRequest:
    """One completion request, tokenized: what the Shield checks and the model answers."""

    prompts: list[list[int]]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    logprobs: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)  # a choice ends before the first of these
    # A chat request's messages, (role, text), as the customer sent them: the Shield puts
    # the deployment's system prompt before them and builds ``prompts`` again.
    messages: list[tuple[str, str]] | None = None
    # A completion request's prompts as sent (text, or token ids), until the Shield
    # tokenizes them into ``prompts``: only once the key's request limits admit it.
    raw_prompts: list[str | list[int]] | None = None

    @property
    def count(self) -> int:
        """How many prompts the request has, before or after they are tokenized."""
        if self.raw_prompts is not None:
            return len(self.raw_prompts)
        return 1 if self.messages is not None and not self.prompts else len(self.prompts)

    @property
    def tokens(self) -> int:
        """Tokens the request may consume: prompts plus every completion at full length."""
        return sum(len(p) for p in self.prompts) + len(self.prompts) * self.n * self.max_tokens


@dataclass
class LMChoice:
    prompt_index: int
    tokens: list[int]
    logprobs: list[float] | None
    top_logprobs: list[list[tuple[int, float]]] | None
    finish_reason: str
    text: str | None = None  # the completion's text, where the model server gave it
