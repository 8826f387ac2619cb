"""The build cache: named by the builder's code and the library versions, built once."""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import pytest

from modelshield.victims import cache


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A builder module of the test's own, importable as ``builder_under_test``."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "builder_under_test", raising=False)
    path = tmp_path / "builder_under_test.py"
    path.write_text('"""Builds things."""\n\ndef train(x):\n    return x + 1\n')
    cache.code_digest.cache_clear()
    cache._tag.cache_clear()
    return path


def _digest_after(path: Path, text: str) -> str:
    path.write_text(text)
    cache.code_digest.cache_clear()
    return cache.code_digest("builder_under_test")


def test_comments_and_docstrings_keep_the_digest_and_code_changes_it(module: Path) -> None:
    before = cache.code_digest("builder_under_test")
    assert _digest_after(module, '"""Other words."""\n\n# a comment\ndef train(x):\n'
                                 '    """Adds one."""\n    return x + 1  # one\n') == before
    assert _digest_after(module, '"""Builds things."""\n\ndef train(x):\n'
                                 '    return x + 2\n') != before


def test_the_tag_changes_with_a_library_version(module: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    before = cache.build_tag("builder_under_test")
    cache._tag.cache_clear()
    monkeypatch.setattr(cache, "library_version",
                        lambda name: "9.9" if name == "torch" else "1.0")
    assert cache.build_tag("builder_under_test") != before
    cache._tag.cache_clear()


def test_the_tag_does_not_depend_on_the_order_of_modules() -> None:
    a = cache.build_tag("modelshield.models", "modelshield.victims.zoo")
    assert a == cache.build_tag("modelshield.victims.zoo", "modelshield.models")
    assert a != cache.build_tag("modelshield.models")


def test_the_cache_folder_is_the_environment_s_or_the_user_s(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELSHIELD_CACHE", str(tmp_path))
    assert cache.cache_dir() == tmp_path
    monkeypatch.delenv("MODELSHIELD_CACHE")
    assert cache.cache_dir() == Path.home() / ".cache" / "modelshield"


def _build_counting(path: str, log: str) -> str:
    def build(tmp: Path) -> None:
        with open(log, "a") as f:
            f.write("built\n")
        tmp.write_text("artifact")

    return cache.cached(Path(path), build=build, load=Path.read_text)


def test_two_processes_wanting_one_artifact_build_it_once(tmp_path: Path) -> None:
    path, log = tmp_path / "a" / "model.bin", tmp_path / "log"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        got = pool.starmap(_build_counting, [(str(path), str(log))] * 4)
    assert got == ["artifact"] * 4
    assert log.read_text() == "built\n"


def test_a_torn_artifact_is_built_again(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_text("torn")

    def load(p: Path) -> str:
        text = p.read_text()
        if text != "artifact":
            raise ValueError("torn")
        return text

    assert cache.cached(path, build=lambda tmp: tmp.write_text("artifact"), load=load) == \
        "artifact"
    assert path.read_text() == "artifact"
    assert not list(tmp_path.glob("*.tmp*"))


def test_a_folder_artifact_is_moved_into_place_whole(tmp_path: Path) -> None:
    path = tmp_path / "lm" / "model"

    def build(tmp: Path) -> None:
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")

    got = cache.cached(path, build=build, load=lambda p: sorted(x.name for x in p.iterdir()),
                       exists=lambda p: (p / "config.json").exists())
    assert got == ["config.json"]
