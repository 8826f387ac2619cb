"""The ASGI entry point uvicorn loads: ``modelshield.serve.main:app``.

Reads the config path from ``MODELSHIELD_CONFIG`` (set by ``modelshield serve``), so each
uvicorn worker builds its own Shield from the same file.
"""

from __future__ import annotations

import os
import sys

from modelshield.errors import ModelShieldError
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_gateway

try:
    app = create_app(build_gateway(os.environ.get("MODELSHIELD_CONFIG")))
except ModelShieldError as exc:  # a worker's one line, not a traceback
    print(f"modelshield: {exc}", file=sys.stderr)
    raise SystemExit(exc.exit_code) from None
