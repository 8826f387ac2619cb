"""The package's import graph points one way (docs/architecture.md):

cli -> audit, serve -> attacks, defenses -> oracle, store, victims, data, models -> registry
-> answer, errors. Every import counts, the ones inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import modelshield

ROOT = Path(modelshield.__file__).parent
LAYER = {"answer": 0, "errors": 0, "registry": 1,
         "data": 2, "models": 2, "store": 2, "victims": 2, "oracle": 2,
         "attacks": 3, "defenses": 3,
         "audit": 4, "serve": 4,
         "cli": 5}
# Allowed sideways: victims train on the built-in data sets with the project's estimators;
# the in-process oracle holds a victim (behind its guard).
SIDEWAYS = {("victims", "data"), ("victims", "models"), ("oracle", "victims")}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m.split(".")[1] for m in out if m.startswith("modelshield.")}


def test_every_package_has_a_layer() -> None:
    top = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
           if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    assert top == set(LAYER)


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        if rel == ("__init__.py",):
            continue
        pkg = rel[0].removesuffix(".py")
        for target in _imports(path) - {pkg}:
            if LAYER[target] >= LAYER[pkg] and (pkg, target) not in SIDEWAYS:
                wrong.append(f"{'/'.join(rel)} imports modelshield.{target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_every_exception_is_in_the_one_family_in_errors_py() -> None:
    """Each exception class is defined in errors.py (drawn there as a tree) and derives
    from ModelShieldError."""
    import inspect

    from modelshield import errors

    elsewhere = []
    for path in ROOT.rglob("*.py"):
        if path.name == "errors.py" and path.parent == ROOT:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(
                        ("Error", "Exception", "Refused", "Blocked", "Denied", "Failed"))
                    for b in node.bases):
                elsewhere.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert not elsewhere
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, Exception) and cls.__module__ == errors.__name__:
            assert issubclass(cls, errors.ModelShieldError), cls
    assert errors.__doc__ is not None
    for name in ("Blocked", "Refused", "UpstreamError", "VariantBlocked"):
        assert name in errors.__doc__
