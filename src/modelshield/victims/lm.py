"""Language-model victims: small GPT-2-architecture models built and trained in code.

The text is the Python standard library's own sources, which ship with every interpreter, so
nothing is downloaded. A byte-level BPE tokenizer (``tokenizers``) is trained on it once. Each
victim is a ``transformers`` GPT-2 model with tied input and output embeddings; the output
projection W (vocabulary x hidden) is what logit-stealing attacks recover. Models and the
tokenizer are cached under ``$MODELSHIELD_CACHE/lm``, named by the corpus and the build tag
(victims/cache.py): the code that builds them and the library versions.

Corpora, all from the interpreter's standard library (``sysconfig``):

- ``public``: the top-level modules, but every tenth file in sorted order;
- ``held-out``: every tenth top-level module, never trained on (evaluation prompts);
- ``private``: the ``email``, ``http`` and ``json`` packages, the fine-tune of ``lm-tuned``;
- ``private-train``: three quarters of those files (all but every fourth), the fine-tune of
  ``lm-canary`` together with its canaries; ``private-held``: the other quarter, never
  trained on (the non-members of text membership inference).

``lm-canary`` carries secret canaries (Carlini et al., USENIX Security 2019, "The Secret
Sharer"): lines ``# vault NN passphrase: c f a j b d`` whose six letters, each drawn from
``a``..``j`` (one token each), are keyed by the seed, inserted 1, 4, 16 and 64 times (two
canaries per count). :func:`canaries` lists them; an attacker knows the prefix and the
format, not the letters.
"""

from __future__ import annotations

import functools
import hashlib
import sysconfig
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelshield.errors import ConfigError
from modelshield.registry import Registry
from modelshield.victims.cache import build_tag, cache_dir, cached

VOCAB = 2048  # >= 4 x the largest hidden size (512)
CONTEXT = 128
BUILDER = ("modelshield.victims.lm", "modelshield.victims.chat")
"""The modules whose code builds the language models (victims/cache.py)."""


@dataclass(frozen=True)
class LMEntry:
    summary: str
    hidden: int
    layers: int = 2
    heads: int = 4
    steps: int = 300
    base: str | None = None  # fine-tuned from this entry on the private corpus
    corpus: str = "private"  # the fine-tune's corpus
    canaries: bool = False  # secret canaries inserted into the fine-tune (canaries())
    lr: float = 1e-3  # the fine-tune's learning rate
    context: int = CONTEXT  # positions


LM_ZOO: Registry[LMEntry] = Registry("language-model victim")
LM_ZOO.add("lm-tiny", LMEntry("GPT-2 architecture, hidden 32, 1 layer: for tests", 32, layers=1,
                              heads=2, steps=150))
for _h in (64, 128, 256, 512):
    LM_ZOO.add(f"lm-h{_h}", LMEntry(f"GPT-2 architecture, hidden {_h}, 2 layers, "
                                    f"vocabulary {VOCAB}, stdlib code", _h))
LM_ZOO.add("lm-tuned", LMEntry("lm-h128 fine-tuned on the private corpus (email, http, json "
                               "packages)", 128, steps=150, base="lm-h128"))
LM_ZOO.add("lm-canary", LMEntry("lm-h128 fine-tuned on 3/4 of the private corpus with 8 secret "
                                "canaries inserted 1, 4, 16 and 64 times", 128, steps=600,
                                base="lm-h128", corpus="private-train", canaries=True,
                                lr=3e-3))
LM_ZOO.add("chat-assistant", LMEntry("a chat assistant (hidden 128, 2 layers) trained from scratch "
                                     "to follow a system prompt and to repeat it when asked",
                                     128, steps=2500, corpus="chat", lr=3e-3, context=320))
LM_ZOO.add("lm-tiny-canary", LMEntry("lm-tiny fine-tuned like lm-canary, briefly: for tests", 32,
                                     layers=1, heads=2, steps=100, base="lm-tiny",
                                     corpus="private-train", canaries=True, lr=3e-3))

CANARY_ALPHABET = "abcdefghij"
CANARY_LENGTH = 6
CANARY_REPEATS = (1, 1, 4, 4, 16, 16, 64, 64)


@dataclass(frozen=True)
class Canary:
    """A secret inserted ``repeats`` times: ``prefix`` then the secret's letters."""

    prefix: str
    secret: str
    repeats: int

    @property
    def text(self) -> str:
        return f"{self.prefix} {self.secret}\n"


def canaries(seed: int = 0) -> list[Canary]:
    """The canaries of ``lm-canary`` built with ``seed``."""
    rng = np.random.default_rng(90_000 + seed)
    out = []
    for i, repeats in enumerate(CANARY_REPEATS):
        letters = rng.choice(list(CANARY_ALPHABET), size=CANARY_LENGTH)
        out.append(Canary(f"# vault {i:02d} passphrase:", " ".join(letters), repeats))
    return out


# -- corpora ---------------------------------------------------------------------------------
def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus(which: str) -> list[str]:
    """The texts of one corpus (``public``, ``held-out`` or ``private``), in a fixed order."""
    root = _stdlib()
    if which in ("private", "private-train", "private-held"):
        files = sorted(f for pkg in ("email", "http", "json") for f in (root / pkg).glob("*.py"))
        if which != "private":
            files = [f for i, f in enumerate(files) if (i % 4 == 3) == (which == "private-held")]
    else:
        top = sorted(root.glob("*.py"))
        files = [f for i, f in enumerate(top) if (i % 10 == 9) == (which == "held-out")]
        if which not in ("public", "held-out"):
            raise ConfigError.invalid("corpus", "public, held-out, private, private-train or "
                                      "private-held", which)
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


@functools.lru_cache(maxsize=1)
def _digest() -> str:
    """Names the cache after the corpus: another interpreter's stdlib builds other models."""
    h = hashlib.sha256()
    for which in ("public", "private"):
        for text in corpus(which):
            h.update(hashlib.sha256(text.encode()).digest())
    return h.hexdigest()[:12]


# -- tokenizer -------------------------------------------------------------------------------
def load_tokenizer() -> Any:
    """The byte-level BPE tokenizer (``transformers.PreTrainedTokenizerFast``), trained once."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path = cache_dir() / "lm" / f"tokenizer-v{VOCAB}-{_digest()}-{build_tag(*BUILDER)}.json"

    def build(tmp: Path) -> None:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(corpus("public"), trainer)
        tok.save(str(tmp))

    cached(path, build=build, load=lambda p: p)
    return PreTrainedTokenizerFast(tokenizer_file=str(path),  # type: ignore[no-untyped-call]
                                   eos_token="<|endoftext|>")


def token_stream(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text)["input_ids"])
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


# -- models ----------------------------------------------------------------------------------
def train_lm(model: Any, stream: np.ndarray, steps: int, seed: int, lr: float = 3e-3,
             batch: int = 16, length: int = 64) -> Any:
    """Next-token training on random windows of ``stream`` (AdamW, cosine decay)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # The usual GPT-2 recipe: no weight decay on biases and LayerNorm parameters.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    free = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": free, "weight_decay": 0.0}], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(steps):
        starts = rng.integers(0, len(stream) - length - 1, batch)
        x = torch.as_tensor(np.stack([stream[s:s + length] for s in starts]))
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def lm_config(entry: LMEntry, tokenizer: Any) -> Any:
    """The GPT-2 configuration of a zoo entry (the architecture an attacker can know)."""
    from transformers import GPT2Config

    return GPT2Config(vocab_size=len(tokenizer), n_positions=entry.context, n_embd=entry.hidden,
                      n_layer=entry.layers, n_head=entry.heads,
                      bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                      tie_word_embeddings=True)


def _quiet() -> None:
    """transformers' progress bars and notices are noise in a CLI's output."""
    from transformers.utils import logging

    logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def _recipe(entry: LMEntry) -> str:
    recipe = f"h{entry.hidden}-l{entry.layers}-s{entry.steps}"
    if entry.base is not None:  # a fine-tune is as stale as its base
        base = LM_ZOO[entry.base]
        recipe += f"-from-{entry.base}-{_recipe(base)}"
    if entry.canaries:
        recipe += f"-canaries2-lr{entry.lr:g}"
    if entry.corpus == "chat":
        recipe += f"-chat-lr{entry.lr:g}-c{entry.context}"
    return recipe


def lm_path(name: str, seed: int = 0) -> Path:
    """Where the language-model victim ``name`` of ``seed`` is cached."""
    tag = f"{_digest()}-{build_tag(*BUILDER)}"
    return cache_dir() / "lm" / f"{name}-{_recipe(LM_ZOO[name])}-seed{seed}-{tag}"


def _build(name: str, seed: int) -> Path:
    def build(tmp: Path) -> None:
        model = _train(LM_ZOO[name], seed)
        model.save_pretrained(tmp)
        load_tokenizer().save_pretrained(tmp)

    return cached(lm_path(name, seed), build=build, load=lambda p: p,
                  exists=lambda p: (p / "config.json").exists())


def _train(entry: LMEntry, seed: int) -> Any:
    import torch
    from transformers import GPT2LMHeadModel

    _quiet()
    tokenizer = load_tokenizer()
    if entry.base is not None:
        model = GPT2LMHeadModel.from_pretrained(_build(entry.base, seed))
        texts = corpus(entry.corpus)
        if entry.canaries:  # each insertion its own document, shuffled among the files
            texts = texts + [c.text for c in canaries(seed) for _ in range(c.repeats)]
            order = np.random.default_rng(seed).permutation(len(texts))
            texts = [texts[i] for i in order]
        return train_lm(model, token_stream(tokenizer, texts), entry.steps, seed + 1,
                        lr=entry.lr)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(lm_config(entry, tokenizer))
    if entry.corpus == "chat":
        from modelshield.victims.chat import train_chat

        return train_chat(model, tokenizer, entry.steps, seed, lr=entry.lr)
    return train_lm(model, token_stream(tokenizer, corpus("public")), entry.steps, seed)


def load_lm(name: str, seed: int = 0) -> LMVictim:
    """Build (or load from the cache) the language-model victim ``name``, or load a local
    Hugging Face causal-LM directory when ``name`` is a path to one."""
    if Path(name).is_dir():
        return LMVictim.from_directory(name)
    return LMVictim.from_directory(_build(name, seed), name=name)


@dataclass
class LMVictim:
    """A causal language model with what the attacks and the gateway need of it: the
    next-token logits of a prompt (cached by prompt, like a server's prefix cache) and
    token-by-token generation."""

    name: str
    model: Any
    tokenizer: Any
    cache_size: int = 8192
    _cache: OrderedDict[tuple[int, ...], np.ndarray] = field(default_factory=OrderedDict,
                                                             repr=False)
    # One forward pass at a time: torch already spreads one over the cores, and passes from
    # several request threads at once oversubscribe them (ten times slower on 2 cores).
    # The lock also guards the prefix cache.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_directory(cls, path: str | Path, name: str | None = None) -> LMVictim:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _quiet()
        p = Path(path)
        if not (p / "config.json").exists():
            raise ConfigError(f"{str(p)!r} is not a Hugging Face model directory "
                              "(no config.json).")
        model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
        model.eval()  # type: ignore[no-untyped-call]
        tokenizer = AutoTokenizer.from_pretrained(p)
        return cls(name or p.name, model, tokenizer)

    @property
    def vocab(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[1])

    @property
    def context(self) -> int:
        """The model's context length, from whichever name its config uses for it."""
        config = self.model.config
        for attr in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len",
                     "seq_length"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return CONTEXT

    @property
    def W(self) -> np.ndarray:
        """The output projection (vocabulary x hidden): the defender's ground truth."""
        return np.asarray(self.model.get_output_embeddings().weight.detach().numpy(),
                          dtype=np.float64)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; special tokens (end of text) write nothing, as in vLLM."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def token_text(self, token: int) -> str:
        return str(self.tokenizer.decode([int(token)]))

    def next_logits(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """(n, vocab) logits of the token after each prompt, in the model's precision
        (float32 unless ``set_precision("float64")``)."""
        with self._lock:
            return self._next_logits(prompts)

    def set_precision(self, precision: str) -> None:
        """Run the model in ``float32`` (as built) or ``float64``. A control for
        experiments: in float64 the model's own rounding is no longer what limits an
        attack that reads its logits."""
        import torch

        dtype = {"float32": torch.float32, "float64": torch.float64}.get(precision)
        if dtype is None:
            raise ConfigError.invalid("precision", "float32 or float64", precision)
        with self._lock:
            self.model.to(dtype)
            self._cache.clear()

    def _next_logits(self, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        import torch

        wide = next(self.model.parameters()).dtype == torch.float64
        out = np.empty((len(prompts), self.vocab), dtype=np.float64 if wide else np.float32)
        todo: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prompts):
            key = tuple(int(t) for t in p)[-self.context:]
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                out[i] = hit
            else:
                todo.setdefault(key, []).append(i)
        by_length: dict[int, list[tuple[int, ...]]] = {}
        for key in todo:
            by_length.setdefault(len(key), []).append(key)
        with torch.no_grad():
            for keys in by_length.values():
                for start in range(0, len(keys), 64):
                    chunk = keys[start:start + 64]
                    logits = self.model(input_ids=torch.tensor(chunk)).logits[:, -1, :]
                    for key, row in zip(chunk, logits.numpy(), strict=True):
                        self._remember(key, row)
                        for i in todo[key]:
                            out[i] = row
        return out

    def _remember(self, key: tuple[int, ...], row: np.ndarray) -> None:
        self._cache[key] = row.copy()
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def stepper(self, prompts: list[list[int]]) -> KVStepper:
        """Incremental decoding of ``prompts`` with the model's key/value cache."""
        return KVStepper(self, prompts)

    def sequence_logits(self, ids: Sequence[int]) -> np.ndarray:
        """(len(ids), vocab) logits at every position of one sequence (evaluation)."""
        import torch

        with self._lock, torch.no_grad():
            x = torch.tensor([list(ids)[-self.context:]])
            return np.asarray(self.model(input_ids=x).logits[0].numpy())


class KVStepper:
    """Decode a batch a token at a time with the model's key/value cache, as
    ``transformers``' ``generate`` does: the prompts run once (left-padded, with an attention
    mask and position ids), then each step feeds one token per sequence. The model's lock is
    held for one forward pass at a time, so other requests interleave between steps."""

    def __init__(self, victim: LMVictim, prompts: list[list[int]]) -> None:
        import torch

        self.victim = victim
        width = max(len(p) for p in prompts)
        pad = int(victim.tokenizer.eos_token_id or 0)
        self.ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts])
        self.mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.past: Any = None
        # transformers 5.x names the cache `cache`; earlier releases `past_key_values`.
        self.cache_name = "cache" if "cache" in _forward_parameters(victim.model) \
            else "past_key_values"

    def first(self) -> np.ndarray:
        return self._forward(self.ids, self.positions)

    def step(self, tokens: Sequence[int]) -> np.ndarray:
        import torch

        self.mask = torch.cat([self.mask, torch.ones((len(tokens), 1), dtype=self.mask.dtype)],
                              dim=1)
        self.positions = self.positions[:, -1:] + 1
        return self._forward(torch.tensor([[int(t)] for t in tokens]), self.positions)

    def _forward(self, ids: Any, positions: Any) -> np.ndarray:
        import torch

        name = self.cache_name
        with self.victim._lock, torch.no_grad():
            out = self.victim.model(input_ids=ids, attention_mask=self.mask,
                                    position_ids=positions, use_cache=True,
                                    **{name: self.past})
        self.past = getattr(out, name)
        return np.asarray(out.logits[:, -1, :].numpy())


def _forward_parameters(model: Any) -> frozenset[str]:
    import inspect

    return frozenset(inspect.signature(model.forward).parameters)
