"""The soak's texts: a fixed, seeded mix of lengths (mostly short queries, some paragraphs, rare long documents),
and texts of a wanted token count built from the shared word list with the service's own token costs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ovembed.workload import WORDS


@dataclass(frozen=True)
class LengthClass:
    name: str
    weight: float
    low: int  # tokens, inclusive
    high: int


def length_classes(max_tokens: int) -> list[LengthClass]:
    """The fixed mix: 85% queries (4-48 tokens), 14% paragraphs (64-512), 1% documents (1024-max)."""
    q_high = min(48, max_tokens)
    p_low = min(64, max_tokens)
    p_high = max(p_low, min(512, max_tokens // 2))
    d_low = max(p_high, min(1024, max_tokens // 2))
    return [LengthClass("query", 0.85, min(4, q_high), q_high), LengthClass("paragraph", 0.14, p_low, p_high),
            LengthClass("document", 0.01, d_low, max_tokens)]


def draw(rng: np.random.Generator, classes: list[LengthClass]) -> tuple[LengthClass, int]:
    """A class by weight, then a length log-uniform within it."""
    cls = classes[int(rng.choice(len(classes), p=[c.weight for c in classes]))]
    tokens = round(math.exp(rng.uniform(math.log(cls.low), math.log(cls.high + 1)))) if cls.high > cls.low else cls.low
    return cls, min(max(tokens, cls.low), cls.high)


@dataclass(frozen=True)
class Sizer:
    """Token costs of the filler words and of the leading number, measured with the service's /tokenize."""

    word_tokens: tuple[int, ...]  # per word of workload.WORDS, without [CLS]/[SEP]
    number_tokens: int  # most tokens a leading request number takes

    def text(self, request_id: int, tokens: int) -> str:
        """A text of at most `tokens` tokens ([CLS] and [SEP] included; at least one word), unique by its number."""
        budget = tokens - 2 - self.number_tokens
        stride = 1 + request_id % 5
        words, used, j = [], 0, 0
        while True:
            w = (request_id * 7 + j * stride) % len(WORDS)
            if words and used + self.word_tokens[w] > budget:
                break
            words.append(WORDS[w])
            used += self.word_tokens[w]
            j += 1
        return f"{request_id} " + " ".join(words)


def measure_sizer(ask, url: str, served_model: str | None, who: str) -> tuple[Sizer, dict]:
    """The filler words' and leading numbers' token costs from the service's /tokenize (with `ask`, a Client), and
    the /tokenize answer (its `model` and `max_length`)."""
    from ovembed.errors import OvembedError, validation

    numbers = [str(10**9 + 12345), str(987654321), "0"]
    try:
        data = ask.tokenize([*WORDS, *numbers], model=served_model)
    except OvembedError as exc:
        raise validation(f"{exc}: the {who} needs {url}/tokenize to size its texts") from None
    counts = data.get("counts")
    if not counts or len(counts) != len(WORDS) + len(numbers):
        raise validation(f"{url}/tokenize gave no counts: the {who} needs them to size its texts")
    costs = [max(1, c - 2) for c in counts]  # each alone is [CLS] word [SEP]
    return Sizer(tuple(costs[:len(WORDS)]), max(costs[len(WORDS):])), data
