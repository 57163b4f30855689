"""From contrast pairs to steering vectors: read activations once, run every estimator per layer.

Works inside Accelerate: rows are sharded across processes, activations gathered back, and
the (deterministic) estimators run on every process, so all ranks hold the same vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import get_peft_model
from safetensors.torch import save as safetensors_bytes

from ..data import ContrastPair
from ..io import atomic_dir, atomic_write
from ..adapter import fixed_vectors
from .activations import Reduce, read_activations
from .estimators import Direction, estimate
from .scoring import truth_accuracy
from .report import LayerReport

# Directions fitted on (x+, x-) without labels; their truth threshold is their own mean projection.
UNSUPERVISED = ("pca", "ccs")


@dataclass
class PairActivations:
    """Activations {layer: (n, d)} at the positive and negative completions of the same pairs."""

    positive: dict[int, torch.Tensor]
    negative: dict[int, torch.Tensor]

    def at(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.positive[layer], self.negative[layer]

    def residual_norm(self, layer: int) -> float:
        both = torch.cat(self.at(layer))
        return float(both.norm(dim=-1).mean())


def pair_activations(
    model, tokenizer, pairs: Sequence[ContrastPair], layers: Sequence[int], *, reduce: Reduce = "mean",
    batch_size: int = 16, accelerator: Accelerator | None = None, progress: bool = False,
) -> PairActivations:
    """One batched pass over positive and negative completions together."""
    if not pairs:
        raise ValueError("No contrast pairs to read: the dataset split is empty.")
    prompts = [p.prompt for p in pairs] * 2
    completions = [p.positive for p in pairs] + [p.negative for p in pairs]
    acts = read_activations(model, tokenizer, prompts, completions, layers, reduce=reduce, batch_size=batch_size,
                            accelerator=accelerator, progress=progress)
    n = len(pairs)
    return PairActivations({k: v[:n] for k, v in acts.items()}, {k: v[n:] for k, v in acts.items()})


@dataclass
class Extraction:
    directions: dict[tuple[str, int], Direction]
    reports: list[LayerReport] = field(default_factory=list)


def fit_directions(
    train: PairActivations,
    estimators: Sequence[str],
    *,
    heldout: PairActivations | None = None,
) -> Extraction:
    """Every estimator at every layer, each with its per-layer report."""
    result = Extraction({})
    for layer in sorted(train.positive):
        pos, neg = train.at(layer)
        for name in estimators:
            direction = estimate(name, pos, neg)
            result.directions[(name, layer)] = direction
            result.reports.append(LayerReport.from_direction(
                layer, direction, train=(pos, neg), residual_norm=train.residual_norm(layer),
                heldout=heldout.at(layer) if heldout is not None else None,
            ))
    return result


def truth_directions(
    train: PairActivations,
    train_labels: Sequence[bool],
    test: PairActivations,
    test_labels: Sequence[bool],
    estimators: Sequence[str],
) -> dict[tuple[str, int], dict[str, float]]:
    """Held-out truth accuracy of each direction on statements (x+ = "True", x- = "False").

    Supervised estimators see the labels: they fit (correct, incorrect) completions, so their
    direction points towards truth. Unsupervised ones (pca, ccs) fit (x+, x-) as given, never see
    a label, and keep their label-free sign; the better-sign accuracy is reported next to it, as
    Burns et al. report CCS. Every direction calls a statement true when (x+ - x-) . u exceeds the
    mean of that projection over the training statements: label-free, and the midpoint between
    true and false ones when both are common (a threshold of 0 would be swamped by the constant
    "True"/"False" token offset that every x+ - x- carries).
    """
    truth = torch.tensor(list(train_labels)).unsqueeze(-1)
    out = {}
    for layer in sorted(train.positive):
        pos, neg = train.at(layer)
        correct, incorrect = torch.where(truth, pos, neg), torch.where(truth, neg, pos)
        test_pos, test_neg = test.at(layer)
        for name in estimators:
            if name in UNSUPERVISED:
                direction = estimate(name, pos, neg, **({"center": True} if name == "pca" else {}))
            else:
                direction = estimate(name, correct, incorrect)
            bias = float(((pos - neg) @ direction.unit.to(pos.dtype)).mean())
            out[(name, layer)] = {
                "accuracy": truth_accuracy(direction, test_pos, test_neg, list(test_labels), bias=bias),
                "accuracy_best_sign": truth_accuracy(direction, test_pos, test_neg, list(test_labels), bias=bias,
                                                     best_sign=True),
                "supervised": name not in UNSUPERVISED,
            }
    return out


def save_adapter(model, vectors: dict[int, torch.Tensor], out_dir: str | Path, *, multiplier: float = 1.0) -> Path:
    """Write `vectors` as a PEFT steer adapter (loadable with PeftModel.from_pretrained).

    The adapter is attached to `model` only while saving and removed again, so the caller's
    model is left as it was.
    """
    config = fixed_vectors(vectors, multiplier)
    config.base_model_name_or_path = getattr(model, "name_or_path", None) or None
    peft_model = get_peft_model(model, config)
    try:
        with atomic_dir(out_dir) as tmp:
            peft_model.save_pretrained(tmp)
    finally:
        peft_model.unload()
    return Path(out_dir)


def save_vectors(extraction: Extraction, path: str | Path) -> Path:
    """All directions in one safetensors file, keyed `<estimator>.<layer>`."""
    tensors = {f"{name}.{layer}": d.vector.contiguous() for (name, layer), d in extraction.directions.items()}
    return atomic_write(path, lambda handle: handle.write(safetensors_bytes(tensors)))
