"""Behaviour data: loading, checking, splitting, formatting, and every method's derived data.

One behaviour dataset (question, matching and non-matching completion) is the single source of
contrast pairs, SFT rows, preference pairs and prompting baselines, so methods compare fairly.
"""

from steerft.data.derive import (
    STATEMENT_QUESTION,
    ContrastPair,
    contrast_pairs,
    preference_rows,
    sft_rows,
    statement_pairs,
)
from steerft.data.format import PromptFormatter
from steerft.data.hygiene import content_key, length_filter
from steerft.data.items import (
    BehaviourDataError,
    BehaviourDataset,
    BehaviourItem,
    Statement,
    StatementDataset,
    answer_key,
)
from steerft.data.load import BUNDLED_BEHAVIOURS, load_behaviour, load_statements, load_texts
from steerft.data.sources import bundled_config, data_dir
from steerft.data.splits import HeldOutIds, Splits, answer_balance, load_held_out_ids, split_items, training_subset

__all__ = [
    "BUNDLED_BEHAVIOURS",
    "STATEMENT_QUESTION",
    "BehaviourDataError",
    "BehaviourDataset",
    "BehaviourItem",
    "ContrastPair",
    "HeldOutIds",
    "PromptFormatter",
    "Splits",
    "Statement",
    "StatementDataset",
    "answer_balance",
    "answer_key",
    "content_key",
    "contrast_pairs",
    "data_dir",
    "length_filter",
    "bundled_config",
    "load_behaviour",
    "load_held_out_ids",
    "load_statements",
    "load_texts",
    "preference_rows",
    "sft_rows",
    "split_items",
    "statement_pairs",
    "training_subset",
]
