"""The build cache: models built in code, built once per machine and kept outside the clone.

Every artifact (a built-in victim, a language model, its tokenizer, a membership attack's
shadow models) is stored under ``$MODELSHIELD_CACHE`` (default ``~/.cache/modelshield``)
with a name that carries a *build tag*: a digest of

* the source of the modules that build it (their syntax tree, so editing a comment or a
  docstring keeps the cache, and changing one line of training code builds again), and
* the versions of the libraries whose numbers it depends on (NumPy, SciPy, scikit-learn,
  PyTorch, transformers, tokenizers, Opacus).

The tests, CI, the CLI and the benchmarks all read the same folder, so the second run of
anything builds nothing. Building takes a lock per artifact (``filelock``): two processes
that want the same model build it once, and the other waits for it and loads it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

LIBRARIES = ("numpy", "scipy", "scikit-learn", "torch", "transformers", "tokenizers", "opacus")
"""The libraries whose versions enter every build tag."""

CACHE_ENV = "MODELSHIELD_CACHE"


def cache_dir() -> Path:
    """The cache folder: ``$MODELSHIELD_CACHE``, else ``~/.cache/modelshield``."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "modelshield"
    return Path(root)


def build_tag(*modules: str) -> str:
    """A 12-hex-digit digest of the builder ``modules``' code and the library versions.

    ``modules`` are dotted names (``"modelshield.victims.zoo"``); their order does not
    matter."""
    return _tag(tuple(sorted(set(modules))))


@functools.cache
def _tag(modules: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name in modules:
        h.update(name.encode() + b"\0" + code_digest(name).encode())
    for lib in LIBRARIES:
        h.update(f"{lib}=={library_version(lib)}".encode())
    return h.hexdigest()[:12]


@functools.cache
def code_digest(module: str) -> str:
    """The digest of a module's syntax tree without its docstrings (comments, blank lines
    and docstrings do not change it)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(module)
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            del body[0]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


@functools.cache
def library_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


@contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """Hold the build lock of the artifact at ``path`` (a file beside it)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        yield


def cached(path: Path, build: Callable[[Path], object], load: Callable[[Path], T],
           exists: Callable[[Path], bool] | None = None) -> T:
    """Load the artifact at ``path``, or build it there first under its lock.

    ``build(tmp)`` writes the artifact to ``tmp``, which is moved to ``path`` whole (a file
    or a folder), so a reader never sees a half-written one; ``load(path)`` reads it. A file
    that fails to load (torn by a killed build, or written by an incompatible version) is
    built again."""
    present = exists or Path.exists
    if present(path):
        try:
            return load(path)
        except Exception:  # any failure to load means: build it again
            pass
    with build_lock(path):
        if present(path):
            try:
                return load(path)
            except Exception:
                _remove(path)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        _remove(tmp)
        build(tmp)
        _remove(path)
        tmp.replace(path)
    return load(path)


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
