"""How good a direction is: pair and truth accuracy, cosines between directions, relative norm.

Separate from the estimators that fit directions (`estimators`); the same float64-on-CPU
conventions apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .estimators import Direction, _as_float64, _as_unit, _check_pairs, _check_positive, _unit

Tensor = torch.Tensor


def pair_accuracy(direction: Direction | Tensor, pos: Tensor, neg: Tensor) -> float:
    """Fraction of pairs with (pos - neg) · u > 0: does the direction separate held-out pairs?"""
    pos, neg = _check_pairs(pos, neg, min_n=1, caller="pair_accuracy")
    u = _as_unit(direction, pos.shape[1])
    return float(((pos - neg) @ u > 0).double().mean())


def truth_accuracy(
    direction: Direction,
    pos: Tensor,
    neg: Tensor,
    labels: Tensor | Sequence[int],
    *,
    bias: float | None = None,
    best_sign: bool = False,
) -> float:
    """Accuracy of calling statement i true iff (pos_i - neg_i) · u > threshold.

    Statement data: x+ = statement + "True", x- = statement + "False", ``labels[i]`` is
    1 when statement i is true. The default threshold is ``direction.scale``, the mean
    projected difference on the split the direction was fitted on: label-free, and
    exactly the decision rule of a CCS probe (its credence exceeds 1/2 iff
    w · (x̃+ - x̃-) > 0 after the per-set centring). Unlike the median, it does not force
    half of the statements to be called true. Pass ``bias`` for a fitted threshold.
    ``best_sign=True`` returns max(acc, 1 - acc), the accuracy under the better of the
    two orientations, which uses the labels to pick the sign (how Burns et al. report CCS).
    """
    pos, neg = _check_pairs(pos, neg, min_n=1, caller="truth_accuracy")
    u = _as_unit(direction, pos.shape[1])
    truth = _check_labels(labels, len(pos))
    threshold = direction.scale if bias is None else float(bias)
    accuracy = float((((pos - neg) @ u > threshold) == truth).double().mean())
    return max(accuracy, 1.0 - accuracy) if best_sign else accuracy


def _check_labels(labels: Tensor | Sequence[int], n: int) -> Tensor:
    labels = torch.as_tensor(labels).cpu()
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), one per pair, got {tuple(labels.shape)}")
    if not ((labels == 0) | (labels == 1)).all():
        raise ValueError("labels must be 0/1 or bool (1 = the statement is true)")
    return labels.bool()


def cosine_similarity_matrix(vectors: Mapping[str, Tensor]) -> tuple[list[str], Tensor]:
    """Pairwise cosines (float64 [k, k]) between named vectors, e.g. estimators x layers."""
    if not vectors:
        raise ValueError("vectors is empty")
    names = list(vectors)
    rows = [_as_float64(vectors[name], f"vectors[{name!r}]") for name in names]
    d = rows[0].shape[-1] if rows[0].ndim else 0
    for name, row in zip(names, rows):
        if row.shape != (d,):
            raise ValueError(f"vectors[{name!r}] needs shape ({d},) like the first, not {tuple(row.shape)}")
    units = torch.stack([_unit(row, f"vectors[{name!r}]") for name, row in zip(names, rows)])
    return names, units @ units.T


def relative_norm(vector: Tensor, residual_norm: float) -> float:
    """‖vector‖ / residual_norm: how hard the vector pushes, relative to the stream it is added to.

    ``residual_norm`` is the typical residual-stream norm at the site, e.g. the mean
    L2 norm of the activations the vector was extracted from.
    """
    _check_positive(residual_norm, "residual_norm")
    return float(_as_float64(vector, "vector").norm()) / residual_norm
