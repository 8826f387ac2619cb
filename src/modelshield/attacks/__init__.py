"""Extraction attacks, one module per technique, registered by name in ``ATTACKS``."""

from modelshield.attacks import equation_solving, path_finding  # noqa: F401  (registers)
from modelshield.attacks.base import ATTACKS, Attack, Checkpoint, Extraction, Session

__all__ = ["ATTACKS", "Attack", "Checkpoint", "Extraction", "Session"]
