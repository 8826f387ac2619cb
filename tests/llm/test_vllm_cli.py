"""The command line's --vocab, which needs no server to refuse where it does not belong."""

from __future__ import annotations

from tests.cli import run_cli


def test_vocab_is_for_a_target_only() -> None:
    r = run_cli("attack", "--attack", "llm-hidden-size", "--victim", "lm-tiny", "--vocab", "50")
    assert r.returncode != 0
    assert "--vocab is for a --target" in r.stderr + r.stdout
    r = run_cli("attack", "--attack", "llm-hidden-size", "--target", "http://127.0.0.1:9",
                "--api-key", "k", "--vocab", "0")
    assert r.returncode != 0 and "--vocab" in r.stderr + r.stdout
