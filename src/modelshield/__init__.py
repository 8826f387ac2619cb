"""modelshield: measure and defend a served model's exposure to model extraction."""

__version__ = "0.1.0"
