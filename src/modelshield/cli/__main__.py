"""``python -m modelshield.cli``."""

from modelshield.cli import main

main()
