"""``victims``, ``attacks`` and ``policies``: what modelshield holds."""

from __future__ import annotations

import dataclasses

from rich.table import Table

from modelshield.attacks import ATTACKS
from modelshield.cli._common import console
from modelshield.defenses.policies import POLICIES
from modelshield.victims.zoo import ZOO

LM_PRIVACY = [  # modelshield.attacks.lm_privacy, run by `modelshield canaries`
    ("canary-exposure", "rank of a secret among random candidates of its format, in bits",
     "top logprobs (as many as the tier gives)", "references", "Carlini et al., USENIX Sec. 2019"),
    ("canary-extraction", "the secret after its prefix: greedy decoding, or beam search",
     "text (greedy); top logprobs (beam)", "method, width", "Carlini et al. 2019"),
    ("min-k", "membership of a text: its k% least likely tokens", "top logprobs", "fraction",
     "Shi et al., ICLR 2024"),
    ("prompt-leak", "a chat assistant's system prompt, by repeat requests, encodings and a "
     "sentence at a time (modelshield prompt-leak)", "text replies (any chat API)",
     "probes, max_tokens", "Zhang et al., COLM 2024"),
]


def victims() -> None:
    """List the built-in victims."""
    from modelshield.victims.lm import LM_ZOO

    table = Table("name", "model", "watermark", title="built-in victims")
    for name, entry in ZOO.items():
        table.add_row(name, entry.summary, entry.watermark or "-")
    for name, lm in LM_ZOO.items():
        table.add_row(name, lm.summary, "-")
    console.print(table)
    console.print("A trigger-set victim answers its keyed trigger inputs with keyed labels; "
                  "an entangled one (EWE) answers source-class rows with a keyed trigger "
                  "stamped on with its target class, and its clones tend to as well "
                  "(`modelshield verify --trigger-set NAME`). Any victim can be served with "
                  "a serve-time watermark (a tier's `watermark:`).", highlight=False)


def attacks() -> None:
    """List the attacks, what they need from the answers, and their parameters."""
    console.print(_extraction_table())
    console.print(_privacy_table())


def _extraction_table() -> Table:
    from modelshield.attacks.logit_stealing import LM_ATTACKS

    table = Table("name", "what it does", "needs", "parameters", title="attacks")
    for name, cls in ATTACKS.items():
        table.add_row(name, cls.summary(), cls.needs, ", ".join(cls.parameters()))
    for name, lm_cls in LM_ATTACKS.items():
        params = ", ".join(f.name for f in dataclasses.fields(lm_cls) if f.name != "random_state")
        table.add_row(name, lm_cls.summary(), lm_cls.needs, params)
    return table


def _privacy_table() -> Table:
    from modelshield.attacks.membership import MEMBERSHIP

    privacy = Table("name", "what it does", "needs", "parameters", "source",
                    title="privacy attacks (modelshield membership)")
    for name, m_cls in MEMBERSHIP.items():
        needs = m_cls.needs + (", the attacker's labelled data and the training recipe "
                               "(shadow models)" if m_cls.uses_shadows else "")
        privacy.add_row(name, m_cls.summary(), needs, ", ".join(m_cls.parameters()), m_cls.paper)
    for name, what, needs, params, paper in LM_PRIVACY:
        privacy.add_row(name, what, needs, params, paper)
    return privacy


def policies() -> None:
    """List the output policies and what they promise honest users."""
    table = Table("name", "what leaves the API", "scores rank top-1 first", title="output policies")
    for name, cls in POLICIES.items():
        table.add_row(name, cls.summary, "yes" if cls.keeps_top1 else "not guaranteed")
    console.print(table)
