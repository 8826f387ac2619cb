"""The ASGI entry point uvicorn loads: ``modelshield.serve.main:app``.

Reads the config path from ``MODELSHIELD_CONFIG`` (set by ``modelshield serve``), so each
uvicorn worker builds its own Shield from the same file.
"""

from __future__ import annotations

import os

from modelshield.serve.app import create_app
from modelshield.serve.factory import build_gateway

app = create_app(build_gateway(os.environ.get("MODELSHIELD_CONFIG")))
