"""Augmented transfer data for text distillation (``--augment N``, ``distill.augment``): N perturbed
copies of each labelled training text join the transfer set without labels, so the teacher labels
them and only the KD term learns from them (as with ``--unlabeled``).

A small student copies the teacher best where it sees the teacher's answers on many inputs near the
task's own; with a few thousand labelled sentences it sees too few. TinyBERT (Jiao et al., 2020)
answers with augmented copies of the training texts; this is the tokenizer-free kind (EDA-like word
operations, Wei & Zou, 2019): each word is dropped with probability ``drop``, else replaced by a word
drawn from the training texts' own words with probability ``replace``, then two neighbouring words
swap with probability ``swap``. A perturbation may change what a text means (dropping "not"): the
teacher's soft label of the copy says what it now means, which is why the copies carry no label.
Deterministic for a seed: the same texts and seed give the same copies in every process.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from edgekit.data.splits import Split
from edgekit.data.unlabeled import UNLABELED

DROP, REPLACE, SWAP = 0.1, 0.1, 0.5


def perturb(words: list[str], vocabulary: Sequence[str], rng: random.Random) -> list[str]:
    """One perturbed copy of ``words`` (never empty: a text whose every word was dropped keeps one)."""
    out = []
    for word in words:
        roll = rng.random()
        if roll < DROP:
            continue
        out.append(vocabulary[rng.randrange(len(vocabulary))] if roll < DROP + REPLACE else word)
    if not out:
        out = [words[rng.randrange(len(words))]]
    if len(out) > 2 and rng.random() < SWAP:
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def augment_texts(texts: Sequence[str], copies: int, seed: int) -> list[str]:
    """``copies`` perturbed versions of every text, copy by copy (all texts' first copies, then the
    second ...). Texts without words (empty, blank) are not copied."""
    worded = [t.split() for t in texts]
    vocabulary = [w for words in worded for w in words]
    if not vocabulary:
        return []
    out = []
    for copy in range(copies):
        rng = random.Random(f"{seed}:{copy}")  # (str seeds hash the same in every process)
        out += [" ".join(perturb(words, vocabulary, rng)) for words in worded if words]
    return out


def augmented(train: Split, copies: int, seed: int) -> Split:
    """The augmented copies of a text split's examples, labelled -1 (no label term)."""
    items = augment_texts([str(t) for t in train.items], copies, seed)
    return Split("augmented", items, np.full(len(items), UNLABELED, dtype=np.int64))
