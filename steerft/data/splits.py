"""Deterministic train/val/test splits and nested training subsets for sample-efficiency curves.

For two-answer formats (A/B letters, Yes/No) validation and test are balanced by which answer
matches, so a model that always gives one answer scores at chance instead of at the split's share
of that answer.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

from steerft.data.hygiene import content_key, read_text
from steerft.data.items import BehaviourDataError, BehaviourItem, answer_key

T = TypeVar("T")


class Splits(NamedTuple, Generic[T]):
    """Train, validation (for choosing layer and multiplier) and a test split no method sees."""

    train: list[T]
    val: list[T]
    test: list[T]


@dataclass(frozen=True)
class HeldOutIds:
    """A split the user fixes: the ids of the test and validation items; every other item trains."""

    test: tuple[str, ...]
    val: tuple[str, ...]


def load_held_out_ids(path: str | os.PathLike) -> HeldOutIds:
    """Read ``{"test": [ids...], "validation": [ids...]}`` (``"val"`` also accepted) from a JSON file."""
    path = Path(path)
    if not path.is_file():
        raise BehaviourDataError("no such split file; give a JSON file with 'test' and 'validation' id lists",
                                 source=str(path))
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise BehaviourDataError(f"invalid JSON ({err.msg})", source=str(path), line=err.lineno) from None
    if not isinstance(data, dict) or "test" not in data or not ({"validation", "val"} & data.keys()):
        raise BehaviourDataError("expected a JSON object with 'test' and 'validation' lists of item ids",
                                 source=str(path))
    lists = {name: data["test"] if name == "test" else data.get("validation", data.get("val"))
             for name in ("test", "validation")}
    for name, ids in lists.items():
        if not isinstance(ids, list) or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids):
            raise BehaviourDataError(f"{name!r} must be a list of item ids (strings or integers)", source=str(path))
    return HeldOutIds(test=tuple(map(str, lists["test"])), val=tuple(map(str, lists["validation"])))


def split_items(items: Sequence[T], seed: int, val_frac: float = 0.2, test_frac: float = 0.2, *,
                held_out: HeldOutIds | None = None) -> Splits[T]:
    """Shuffle with ``seed`` and cut; the same items and seed always give the same splits.

    Keep this seed fixed across a study: the test split must stay the same while the training
    subsets are resampled with their own seeds. When every item is a two-answer item
    (``answer_key``), validation and test take the matching answers in turn, so each is balanced
    to within one item, and the balance is printed. ``held_out`` fixes test and validation by id
    instead (the fractions are then unused).
    """
    _check_no_repeats(items)
    if held_out is not None:
        return _held_out_splits(items, held_out)
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
    keys = _answer_keys(shuffled)
    if keys is None:
        return Splits(train=shuffled[n_test + n_val:], val=shuffled[n_test:n_test + n_val], test=shuffled[:n_test])
    test = _take_in_turn(range(len(shuffled)), keys, n_test)
    val = _take_in_turn([i for i in range(len(shuffled)) if i not in test], keys, n_val)
    splits = Splits(train=[item for i, item in enumerate(shuffled) if i not in test and i not in val],
                    val=[shuffled[i] for i in sorted(val)], test=[shuffled[i] for i in sorted(test)])
    print(f"steerft data: answer-balanced splits: {answer_balance(splits)}", flush=True)
    return splits


def answer_balance(splits: Splits) -> str:
    """How many items of each split match each answer, e.g. "test 20 (A 10, B 10), ..."."""
    parts = []
    for name, part in (("test", splits.test), ("validation", splits.val), ("train", splits.train)):
        counts = Counter(answer_key(item.matching, item.not_matching) if isinstance(item, BehaviourItem) else None
                         for item in part)
        inner = ", ".join(f"{key if key is not None else 'other'} {count}" for key, count in sorted(
            counts.items(), key=lambda kv: str(kv[0])))
        parts.append(f"{name} {len(part)} ({inner})" if part else f"{name} 0")
    return ", ".join(parts)


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


def _check_no_repeats(items: Sequence[T]) -> None:
    """A repeated item would land on both sides of the split; ``load_behaviour`` drops repeats."""
    behaviour = [item for item in items if isinstance(item, BehaviourItem)]
    repeats = len(behaviour) - len({content_key(item) for item in behaviour})
    if repeats:
        raise BehaviourDataError(f"{repeats} items repeat another item's prompt and completions, so copies would "
                                 "land in training and in test; drop them first (load_behaviour does)")


def _answer_keys(items: Sequence[T]) -> list[str] | None:
    """Each item's matching answer when all items are two-answer items with the same two answers."""
    if not items or not all(isinstance(item, BehaviourItem) for item in items):
        return None
    keys = [answer_key(item.matching, item.not_matching) for item in items]
    if None in keys or len(set(keys)) != 2:
        return None
    return keys


def _take_in_turn(pool: Sequence[int], keys: list[str], n: int) -> set[int]:
    """``n`` indices from ``pool``, one per answer in turn, so each answer gets n/2 (±1) when it can."""
    queues = {key: deque(i for i in pool if keys[i] == key) for key in sorted(set(keys))}
    taken: set[int] = set()
    while len(taken) < n:
        for queue in queues.values():
            if queue and len(taken) < n:
                taken.add(queue.popleft())
    return taken


def _held_out_splits(items: Sequence[T], held_out: HeldOutIds) -> Splits[T]:
    by_id = {str(item.id): item for item in items}
    for name, ids in (("test", held_out.test), ("validation", held_out.val)):
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise BehaviourDataError(f"the {name} ids {unknown[:5]}{' ...' if len(unknown) > 5 else ''} are not "
                                     "in the dataset (after dropping duplicates); use ids of its items")
        repeated = sorted(i for i, count in Counter(ids).items() if count > 1)
        if repeated:
            raise BehaviourDataError(f"the {name} ids list {repeated[:5]} more than once")
    both = sorted(set(held_out.test) & set(held_out.val))
    if both:
        raise BehaviourDataError(f"ids {both[:5]} are in both test and validation; give each item one split")
    held = set(held_out.test) | set(held_out.val)
    return Splits(train=[item for item in items if str(item.id) not in held],
                  val=[by_id[i] for i in held_out.val], test=[by_id[i] for i in held_out.test])


def _permutation(size: int, seed: str) -> list[int]:
    # String seeds are hashed with SHA-512 by `random`, so they are stable across runs and
    # machines, and the split and subset streams stay independent for the same integer seed.
    order = list(range(size))
    random.Random(seed).shuffle(order)
    return order
