"""Real servers for tests (Redis, PostgreSQL, vLLM), started on free loopback ports.

In CI (``CI`` set) a missing server binary is a failure, not a skip: .ci/run installs them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _need(binary: str) -> str:
    path = shutil.which(binary) or next(
        (str(p) for p in Path("/usr/lib/postgresql").glob(f"*/bin/{binary}")), None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is not installed; .ci/run must install it")
        pytest.skip(f"{binary} is not installed")
    return path


@contextmanager
def redis_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([_need("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def postgres_server() -> Iterator[str]:
    initdb, pg_ctl = _need("initdb"), _need("pg_ctl")
    root = os.geteuid() == 0
    data = Path(tempfile.mkdtemp(prefix="ms-pg-"))
    if root:
        shutil.chown(data, "postgres", "postgres")
    run = ["runuser", "-u", "postgres", "--"] if root else []
    port = free_port()
    subprocess.run([*run, initdb, "-D", str(data / "db"), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*run, pg_ctl, "-D", str(data / "db"), "-w", "-l", str(data / "log"),
                    "-o", f"-p {port} -k {data} -h 127.0.0.1 -c fsync=on", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run, pg_ctl, "-D", str(data / "db"), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def _wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextmanager
def live_app(app: object) -> Iterator[object]:
    """Serve an ASGI app with uvicorn on a free loopback port; yield an httpx client for it."""
    import threading

    import httpx
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,  # type: ignore[arg-type]
                                           log_level="warning", lifespan="off",
                                           proxy_headers=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait_port(port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)


# -- vLLM ------------------------------------------------------------------------------------
# Small causal language models the tests build and save (no download), and vLLM's CPU build
# serving one of them. Head size 32: vLLM's CPU attention supports it (24 it does not).
TINY_LMS: dict[str, dict[str, int]] = {
    "llama": {"hidden_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2},
    "qwen2": {"hidden_size": 96, "num_attention_heads": 3, "num_key_value_heads": 1},
}
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _tiny_tokenizer(vocab: int) -> object:
    """A byte-level BPE tokenizer of ``vocab`` tokens trained on standard-library source.
    Byte-level: the 128 bytes above 0x7f each decode alone to the same replacement text, so
    distinct token ids collide as text."""
    import inspect
    import json as json_module

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    texts = [inspect.getsource(m) for m in (json_module, inspect, socket, shutil)]
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_hf_lm(folder: Path, arch: str, vocab: int = 384, seed: int = 0) -> Path:
    """A two-layer ``arch`` model (``TINY_LMS``) with random weights and the tokenizer
    above, saved with ``save_pretrained`` in float32 under ``folder``; its path. The output
    projection is scaled up so that logits spread over a few nats."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer: Any = _tiny_tokenizer(vocab)
    size = TINY_LMS[arch]
    config = AutoConfig.for_model(
        arch, vocab_size=len(tokenizer), intermediate_size=2 * size["hidden_size"],
        num_hidden_layers=2, head_dim=32, max_position_embeddings=512,
        tie_word_embeddings=False, bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id, torch_dtype="float32", **size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(50.0)
    path = folder / arch
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def vllm_python() -> str:
    """The interpreter of vLLM's own venv: VLLM_PYTHON (``make test`` sets it), else
    ``.venv-vllm`` beside this checkout. In CI a missing vLLM fails its tests."""
    found = os.environ.get("VLLM_PYTHON") or str(
        Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "python")
    if not Path(found).exists():
        if os.environ.get("CI"):
            pytest.fail(f"vLLM is not installed at {found} (`make test` creates .venv-vllm)")
        pytest.skip(f"vLLM is not installed at {found}; `make .venv-vllm/bin/vllm-ready`")
    return found


def start_vllm(model: Path, name: str, *, max_logprobs: int = 20, processed: bool = True,
               max_model_len: int = 256) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start vLLM's OpenAI server on ``model`` (a directory) under ``name``, without waiting:
    (process, base URL, log file). ``processed``: ``--logprobs-mode processed_logprobs``
    (logprobs after logit_bias); else vLLM's default, raw logprobs."""
    port = free_port()
    log = model.parent / f"vllm-{name}.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    cmd = [vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", "float32", "--max-model-len", str(max_model_len),
           "--max-logprobs", str(max_logprobs), "--seed", "0",
           "-O0"]  # no torch.compile: minutes saved at start-up, nothing lost on a tiny model
    if processed:
        cmd += ["--logprobs-mode", "processed_logprobs"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}", log


def wait_vllm(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 900.0
              ) -> None:
    """Wait until the server answers /health (start-up takes minutes on two cores)."""
    import httpx

    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited ({proc.returncode}):\n" +
                               log.read_text(errors="replace")[-3000:])
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    proc.terminate()
    raise RuntimeError(f"vLLM did not start in {timeout:.0f} s:\n" +
                       log.read_text(errors="replace")[-3000:])


def stop_vllm(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
