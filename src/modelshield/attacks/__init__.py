"""Extraction attacks, one module per technique, registered by name in ``ATTACKS``."""

from modelshield.attacks import (  # noqa: F401  (importing registers)
    active,
    equation_solving,
    jacobian,
    knockoff,
    label_only,
    path_finding,
    relu_deep,
    relu_exact,
)
from modelshield.attacks.base import ATTACKS, Attack, Checkpoint, Extraction, Session

__all__ = ["ATTACKS", "Attack", "Checkpoint", "Extraction", "Session"]
