"""Deterministic train/val/test splits and nested training subsets for sample-efficiency curves."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Generic, NamedTuple, TypeVar

from steerft.data.items import BehaviourDataError

T = TypeVar("T")


class Splits(NamedTuple, Generic[T]):
    """Train, validation (for choosing layer and multiplier) and a test split no method sees."""

    train: list[T]
    val: list[T]
    test: list[T]


def split_items(items: Sequence[T], seed: int, val_frac: float = 0.2, test_frac: float = 0.2) -> Splits[T]:
    """Shuffle with ``seed`` and cut; the same file and seed always give the same splits.

    Keep this seed fixed across a study: the test split must stay the same while the training
    subsets are resampled with their own seeds.
    """
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise BehaviourDataError(f"val_frac={val_frac} and test_frac={test_frac} must be in [0, 1) and "
                                 "leave a training share (val_frac + test_frac < 1)")
    order = _permutation(len(items), f"steerft.split:{seed}")
    n_test = round(len(items) * test_frac)
    n_val = round(len(items) * val_frac)
    if n_test + n_val >= len(items):
        raise BehaviourDataError(f"{len(items)} items are too few to split with val_frac={val_frac} and "
                                 f"test_frac={test_frac}: no training items would remain")
    shuffled = [items[i] for i in order]
    return Splits(train=shuffled[n_test + n_val:], val=shuffled[n_test:n_test + n_val], test=shuffled[:n_test])


def training_subset(train_items: Sequence[T], n: int, seed: int) -> list[T]:
    """The first ``n`` items of a seeded permutation of the training split.

    Taking a prefix makes subsets nested (for one seed, the n=8 subset contains the n=4 one), so
    a sample-efficiency curve adds data instead of redrawing it at every n.
    """
    if n < 0:
        raise BehaviourDataError(f"n={n} must be >= 0")
    if n > len(train_items):
        raise BehaviourDataError(
            f"asked for n={n} training items but the training split has only {len(train_items)}; "
            "lower n, or give the training split a larger share (smaller val_frac/test_frac) or use more data")
    order = _permutation(len(train_items), f"steerft.subset:{seed}")
    return [train_items[i] for i in order[:n]]


def _permutation(size: int, seed: str) -> list[int]:
    # String seeds are hashed with SHA-512 by `random`, so they are stable across runs and
    # machines, and the split and subset streams stay independent for the same integer seed.
    order = list(range(size))
    random.Random(seed).shuffle(order)
    return order
