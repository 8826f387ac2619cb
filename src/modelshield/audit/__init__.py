"""Evaluation of extractions (and, with the audit runner, scenarios and reports)."""

from modelshield.audit.evaluate import Result, evaluate, fidelity_curve, run_cell, uniform_probe

__all__ = ["Result", "evaluate", "fidelity_curve", "run_cell", "uniform_probe"]
