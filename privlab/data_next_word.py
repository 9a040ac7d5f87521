"""Synthetic next-word prediction on phones: per-user text from a small grammar, with canaries.

The source brief's federated example is next-word suggestion on phones, where what people type
reveals their life. This generator makes such text without downloading anything: each user has
favourite topics (a user-specific vocabulary) and a style (which sentence templates they use,
how often they add adjectives); sentences are drawn from a handful of templates and tokenised
into one stream per user. A record is a window of `context` previous tokens (as float token
ids, the model casts them) and the next token as its label. The user of each training record
is its group, so `partition.scheme = "by_group"` puts every user on a phone of their own.

Canaries, as in Carlini et al. 2019 ("The Secret Sharer: Evaluating and Testing Unintended
Memorization in Neural Networks", USENIX Security): the sentence "my pin is d d d d" with one
secret 4-digit PIN is inserted `canary_repeats` times into the text of each of the first
`canary_users` users. Digits also occur in ordinary text (times, bus numbers), so the model has
a reason to predict them; only memorisation ranks the secret PIN above the other 9,999.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from privlab.data import Dataset, _make, _validate

FUNCTION_WORDS = (
    "<bos>", "<eos>", "i", "you", "we", "the", "a", "to", "and", "my", "is", "pin", "at",
    "with", "some", "this", "really", "so", "bus", "number", "meet", "tomorrow",
)  # fmt: skip
DIGITS = tuple(str(d) for d in range(10))
VERBS = ("like", "want", "need", "love", "hate", "see", "buy", "find", "try", "miss")
ADJECTIVES = ("new", "old", "good", "bad", "big", "small", "cheap", "nice", "late", "early")
TOPICS: dict[str, tuple[str, ...]] = {
    "food": ("pizza", "pasta", "salad", "coffee", "tea", "bread", "cake", "soup", "rice", "fish"),
    "sport": ("match", "ball", "team", "goal", "race", "bike", "gym", "run", "swim", "coach"),
    "health": ("doctor", "pill", "clinic", "fever", "nurse", "therapy", "diet", "sleep", "pain",
               "scan"),
    "work": ("meeting", "boss", "email", "report", "office", "client", "deadline", "desk", "shift",
             "salary"),
    "travel": ("train", "flight", "hotel", "beach", "ticket", "map", "taxi", "airport", "city",
               "trip"),
    "music": ("song", "band", "concert", "guitar", "album", "piano", "radio", "singer", "drum",
              "choir"),
    "family": ("mum", "dad", "baby", "sister", "brother", "school", "party", "gift", "wedding",
               "home"),
    "money": ("bank", "loan", "rent", "bill", "card", "cash", "debt", "tax", "price", "budget"),
}  # fmt: skip
VOCAB: tuple[str, ...] = (
    FUNCTION_WORDS + DIGITS + VERBS + ADJECTIVES + tuple(w for ws in TOPICS.values() for w in ws)
)
WORD_ID = {w: i for i, w in enumerate(VOCAB)}
CANARY_PREFIX = ("my", "pin", "is")
PIN_LENGTH = 4


class NextWordParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_users: int = Field(default=1000, ge=2, le=100_000)
    sentences_per_user: int = Field(default=12, ge=1, le=10_000)
    topics_per_user: int = Field(default=2, ge=1, le=len(TOPICS))
    words_per_topic: int = Field(default=5, ge=1, le=10)
    """How many of a topic's words a user actually uses (their personal vocabulary)."""
    context: int = Field(default=3, ge=1, le=16)
    canary_users: int = Field(default=10, ge=0)
    canary_repeats: int = Field(default=8, ge=0, le=10_000)


def _sentence(rng: np.random.Generator, user: dict[str, Any]) -> list[str]:
    noun = str(rng.choice(user["nouns"]))
    verb = str(rng.choice(user["verbs"]))
    adjective = [str(rng.choice(ADJECTIVES))] if rng.random() < user["adjective_rate"] else []
    template = rng.choice(4, p=user["style"])
    if template == 0:
        return ["i", verb, "the", *adjective, noun]
    if template == 1:
        return ["we", verb, "some", *adjective, noun, "tomorrow"]
    if template == 2:
        return ["meet", "at", "the", noun, "at", str(rng.integers(10)), str(rng.integers(10))]
    return [
        "you",
        "really",
        verb,
        "my",
        *adjective,
        noun,
        "so",
        "bus",
        "number",
        str(rng.integers(10)),
    ]


def _user_profile(rng: np.random.Generator, p: NextWordParams) -> dict[str, Any]:
    topics = rng.choice(list(TOPICS), size=p.topics_per_user, replace=False)
    nouns = [
        w for t in topics for w in rng.choice(TOPICS[t], size=p.words_per_topic, replace=False)
    ]
    return {
        "nouns": nouns,
        "verbs": list(rng.choice(VERBS, size=3, replace=False)),
        "adjective_rate": float(rng.uniform(0.0, 0.8)),
        "style": rng.dirichlet(np.full(4, 0.7)),
    }


def canary_secret(seed: int) -> tuple[str, ...]:
    """The PIN inserted as canary (drawn from the data seed; only the referee reads it back)."""
    rng = np.random.default_rng([seed, 4821])
    return tuple(str(d) for d in rng.integers(10, size=PIN_LENGTH))


def user_streams(p: NextWordParams, seed: int) -> list[list[str]]:
    """One token stream per user: sentences (and canaries) separated by <eos>."""
    rng = np.random.default_rng([seed, 907])
    pin = canary_secret(seed)
    streams = []
    for u in range(p.num_users):
        profile = _user_profile(rng, p)
        sentences = [_sentence(rng, profile) for _ in range(p.sentences_per_user)]
        if u < p.canary_users:
            for _ in range(p.canary_repeats):
                sentences.insert(int(rng.integers(len(sentences) + 1)), [*CANARY_PREFIX, *pin])
        tokens = ["<bos>"] * p.context
        for s in sentences:
            tokens += [*s, "<eos>"]
        streams.append(tokens)
    return streams


def windows(tokens: list[str], context: int) -> tuple[np.ndarray, np.ndarray]:
    """(context previous token ids, next token id) for every position after the padding."""
    ids = np.array([WORD_ID[t] for t in tokens], dtype=np.int64)
    idx = np.arange(context, len(ids))
    x = np.stack([ids[idx - context + j] for j in range(context)], axis=1)
    return x, ids[idx]


def load_next_word(params: dict[str, Any], *, test_fraction: float, seed: int) -> Dataset:
    """Per-user next-word records; each user's records are split into train and test by
    `test_fraction` (the test set is the population of held-out typing)."""
    p = _validate(NextWordParams, params)
    if p.canary_users > p.num_users:
        from privlab.errors import ScenarioError

        raise ScenarioError(
            f"data.params.canary_users: at most num_users ({p.num_users}), got {p.canary_users}"
        )
    rng = np.random.default_rng([seed, 911])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("xtr", "ytr", "gtr", "xte", "yte")}
    for u, tokens in enumerate(user_streams(p, seed)):
        x, y = windows(tokens, p.context)
        test = rng.random(len(y)) < test_fraction
        if u < p.canary_users:  # canaries are training data: never held out
            test &= ~canary_positions(tokens)[p.context :]
        parts["xtr"].append(x[~test])
        parts["ytr"].append(y[~test])
        parts["gtr"].append(np.full(int((~test).sum()), u, dtype=np.int64))
        parts["xte"].append(x[test])
        parts["yte"].append(y[test])
    data = _make(
        "next_word",
        np.concatenate(parts["xtr"]).astype(np.float32),
        np.concatenate(parts["ytr"]),
        np.concatenate(parts["xte"]).astype(np.float32),
        np.concatenate(parts["yte"]),
        len(VOCAB),
    )
    return dataclasses.replace(data, groups_train=np.concatenate(parts["gtr"]))


def canary_positions(tokens: list[str]) -> np.ndarray:
    """Boolean mask of the tokens that belong to an inserted canary sentence."""
    mask = np.zeros(len(tokens), dtype=bool)
    n = len(CANARY_PREFIX) + PIN_LENGTH
    for i in range(len(tokens) - n + 1):
        if tuple(tokens[i : i + len(CANARY_PREFIX)]) == CANARY_PREFIX:
            mask[i : i + n] = True
    return mask
