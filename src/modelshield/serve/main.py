"""The ASGI entry point uvicorn loads: ``modelshield.serve.main:app``.

Reads the config path from ``MODELSHIELD_CONFIG`` (set by ``modelshield serve``), so each
uvicorn worker builds its own Shield from the same file.
"""

from __future__ import annotations

import os

from modelshield.defenses.shield import Shield
from modelshield.serve.app import create_app

app = create_app(Shield.from_config(os.environ.get("MODELSHIELD_CONFIG")))
