"""Defenses: output policies (and, with the Shield, the admission and recording stages)."""

from modelshield.defenses.policies import (
    POLICIES,
    FullProbabilities,
    KeyedNoise,
    LabelOnly,
    LeafConfidence,
    LeafId,
    OutputPolicy,
    ReverseSigmoid,
    Rounding,
    TopK,
    parse_policy,
)

__all__ = [
    "POLICIES",
    "FullProbabilities",
    "KeyedNoise",
    "LabelOnly",
    "LeafConfidence",
    "LeafId",
    "OutputPolicy",
    "ReverseSigmoid",
    "Rounding",
    "TopK",
    "parse_policy",
]
