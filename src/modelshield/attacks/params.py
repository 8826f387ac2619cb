"""Attack parameters written as ``key=value`` text: on the command line and in scenarios."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from modelshield.errors import ConfigError


def parse_params(cls: type, items: list[str], where: str = "--param") -> dict[str, Any]:
    """``key=value`` strings into typed keyword arguments for the dataclass ``cls``.

    ``where`` names the source in messages (a CLI option, a scenario field).
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "random_state"]
    out: dict[str, Any] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in names:
            raise ConfigError(f"{where} {item!r}: expected key=value with key one of "
                              f"{', '.join(names)}.")
        out[key] = _coerce(raw.strip(), hints[key], key)
    return out


def _coerce(raw: str, hint: Any, key: str) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if raw.lower() == "none":
            return None
        hint = args[0]
    origin = typing.get_origin(hint)
    try:
        if origin is tuple:
            return tuple(int(v) for v in raw.split(",") if v)
        if hint is bool:
            if raw.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"true", "1", "yes"}
        if hint in (int, float):
            return hint(raw)
    except ValueError:
        name = "comma-separated integers" if origin is tuple else getattr(hint, "__name__", "")
        raise ConfigError.invalid(key, f"a value of type {name}", raw) from None
    return raw
