"""Steering-direction estimators over paired contrast activations (scored in `scoring`).

Every estimator takes ``pos`` and ``neg`` of shape ``[n, d]``: row ``i`` of both comes
from the same prompt, completed with the matching (``pos``) and the non-matching
(``neg``) answer. It returns a :class:`Direction`.

Conventions shared by all estimators:

* The maths runs on CPU in float64: estimators are cheap next to reading activations,
  float64 keeps SVD and L-BFGS reproducible, and some accelerators lack float64.
  Returned tensors are float32 on CPU.
* ``Direction.unit`` is the estimator's own unit direction ``u``.
* ``Direction.scale = mean(pos - neg) · u`` and ``Direction.vector = u * scale``: the mean
  difference projected on ``u``. So ``mean_diff`` (CAA) is unchanged and is the scale
  reference, and every other estimator gets the CAA scale along its own direction:
  all vectors are usable as steering vectors with the same multiplier range. The
  product does not depend on the sign of ``u`` (it always has a non-negative
  projection on the mean difference); only ``unit`` carries the estimator's sign.
* Sign of ``unit``: ``mean_diff`` and ``logistic`` have a natural sign (towards ``pos``);
  ``pca`` and ``ccs`` are sign-ambiguous and are oriented so that ``u · mean(pos - neg) >= 0``.
* ``info`` holds JSON-serialisable diagnostics (always ``estimator``, ``n`` and ``d``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..choices import ESTIMATOR_NAMES, in_order

Tensor = torch.Tensor

SIGN_RULE = (
    "u is oriented so that u . mean(pos - neg) >= 0: on raw activations the direction "
    "scores the '+' completion of a pair higher on average"
)


@dataclass(frozen=True, eq=False)
class Direction:
    """A steering direction and how it was found.

    ``vector`` is ready to add to the residual stream (CAA scale, see the module doc).
    ``unit`` keeps the estimator's orientation, which ``vector`` loses when ``scale``
    is negative. ``scale`` is the training mean paired difference projected on
    ``unit``; :func:`truth_accuracy` reuses it as its label-free threshold.
    """

    vector: Tensor
    unit: Tensor
    scale: float
    info: dict[str, Any]


# ---------------------------------------------------------------- validation


def _as_float64(x: Any, name: str) -> Tensor:
    """A detached float64 CPU copy, so callers' tensors are never modified or tracked."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    x = x.detach().to("cpu", torch.float64, copy=True)
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_pairs(pos: Tensor, neg: Tensor, *, min_n: int, caller: str) -> tuple[Tensor, Tensor]:
    """Validate paired activations and return float64 copies."""
    pos, neg = _as_float64(pos, "pos"), _as_float64(neg, "neg")
    for name, x in (("pos", pos), ("neg", neg)):
        if x.ndim != 2:
            raise ValueError(f"{name} must be 2-D [n, d], got shape {tuple(x.shape)}")
    if pos.shape != neg.shape:
        raise ValueError(
            "pos and neg must have the same shape (row i of each comes from prompt i), "
            f"got pos {tuple(pos.shape)} and neg {tuple(neg.shape)}"
        )
    n, d = pos.shape
    if d == 0:
        raise ValueError("pos and neg have no features (d = 0)")
    if n < min_n:
        raise ValueError(f"{caller} needs at least {min_n} pairs, got n = {n} rows in pos and neg")
    return pos, neg


def _check_positive(value: float, name: str, *, allow_zero: bool = False) -> None:
    bound = ">= 0" if allow_zero else "> 0"
    finite = isinstance(value, numbers.Real) and math.isfinite(value)
    if not (finite and (value >= 0 if allow_zero else value > 0)):
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _check_count(value: int, name: str) -> None:
    if not (isinstance(value, numbers.Integral) and value >= 1):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _unit(v: Tensor, what: str) -> Tensor:
    norm = v.norm()
    if norm == 0:
        raise ValueError(f"{what} is zero, so it defines no direction")
    return v / norm


def _orient(u: Tensor, mean_diff_: Tensor) -> Tensor:
    """Resolve a sign ambiguity with :data:`SIGN_RULE`."""
    return -u if u @ mean_diff_ < 0 else u


def _direction(estimator: str, u: Tensor, diffs: Tensor, **info: Any) -> Direction:
    """Apply the shared scale convention: the mean difference projected on ``u``."""
    scale = float(u @ diffs.mean(0))
    n, d = diffs.shape
    return Direction(
        vector=(u * scale).float(),
        unit=u.float(),
        scale=scale,
        info={"estimator": estimator, "n": n, "d": d, **info},
    )


# ---------------------------------------------------------------- estimators


def mean_diff(pos: Tensor, neg: Tensor) -> Direction:
    """CAA: the mean of the paired differences, a strong default and the scale reference."""
    pos, neg = _check_pairs(pos, neg, min_n=1, caller="mean_diff")
    diffs = pos - neg
    return _direction("mean_diff", _unit(diffs.mean(0), "mean(pos - neg)"), diffs)


def pca(pos: Tensor, neg: Tensor, *, center: bool = False) -> Direction:
    """First principal component of the paired differences ``pos - neg``.

    Uncentred by default: centring subtracts the mean difference, which is the very
    signal CAA-style steering wants, so the uncentred component (the top direction of
    the differences' second moment) is the standard choice. ``center=True`` gives the
    direction along which pairs *vary* most (repeng-style), which can be orthogonal to
    the mean difference. Needs n >= 2. The sign follows :data:`SIGN_RULE`.
    """
    pos, neg = _check_pairs(pos, neg, min_n=2, caller="pca")
    diffs = pos - neg
    x = diffs - diffs.mean(0) if center else diffs
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    u = _orient(vh[0], diffs.mean(0))
    return _direction(
        "pca",
        u,
        diffs,
        center=center,
        explained_variance_ratio=explained_variance(diffs, u, center=center),
        sign_rule=SIGN_RULE,
    )


def logistic(pos: Tensor, neg: Tensor, *, l2: float = 1e-2, max_iter: int = 500) -> Direction:
    """Weight of an L2-regularised logistic probe separating pos (label 1) from neg (label 0).

    Activations are centred and divided by one global RMS, not standardised per
    feature: a single scale keeps the penalty isotropic, so the direction is
    rotation-equivariant like mean_diff and pca (per-feature scaling would favour
    low-variance features) and ``l2`` is unitless across layers and models. As
    ``l2`` grows the direction tends to the mean difference. The probe weight in
    activation space is the normalised weight divided by that scalar, so the
    direction is unchanged. Needs n >= 2; ``l2 > 0`` keeps the optimum finite on
    separable data (always the case when n < d).
    """
    _check_positive(l2, "l2")
    _check_count(max_iter, "max_iter")
    pos, neg = _check_pairs(pos, neg, min_n=2, caller="logistic")
    x = torch.cat([pos, neg])
    x = _rms_normalise(x - x.mean(0))
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
    weight, _, fit = fit_logistic(x, y, l2=l2, max_iter=max_iter)
    return _direction("logistic", _unit(weight, "the logistic probe weight"), pos - neg, l2=l2, **fit)


def _rms_normalise(centred: Tensor) -> Tensor:
    rms = centred.pow(2).mean().sqrt()
    if rms == 0:
        raise ValueError("every row of pos and neg is the same vector, so there is nothing to separate")
    return centred / rms


@torch.inference_mode(False)
@torch.enable_grad()
def fit_logistic(x: Tensor, y: Tensor, *, l2: float, max_iter: int = 500) -> tuple[Tensor, float, dict[str, Any]]:
    """(weight, bias, fit info) minimising mean log-loss + l2/2 |w|^2: full-batch L-BFGS in float64, deterministic
    (zero start). Autograd is forced on so callers may hold inference_mode."""
    x, y = x.clone(), y.clone()
    params = torch.zeros(x.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [params],
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        weight, bias = params[:-1], params[-1]
        loss = F.binary_cross_entropy_with_logits(x @ weight + bias, y) + 0.5 * l2 * weight.dot(weight)
        loss.backward()
        return loss

    opt.step(closure)
    loss = closure()
    weight, bias = params.detach()[:-1], params.detach()[-1]
    accuracy = ((x @ weight + bias > 0).double() == y).double().mean()
    return weight, float(bias), {
        "loss": float(loss.detach()),
        "grad_norm": float(params.grad.norm()),
        "n_iter": int(opt.state_dict()["state"][0]["n_iter"]),
        "probe_train_accuracy": float(accuracy),
    }


def ccs(
    pos: Tensor,
    neg: Tensor,
    *,
    n_restarts: int = 10,
    steps: int = 1000,
    lr: float = 1e-2,
    seed: int = 0,
    normalize_variance: bool = False,
    l2: float = 0.0,
) -> Direction:
    """Contrast-Consistent Search (Burns et al. 2022): an unsupervised probe, no labels used.

    Each set is centred on its own mean, as in the paper, which removes what is
    constant across pairs (e.g. the identity of the "True"/"False" token). Both sets are
    then divided by one shared RMS so sigmoid inputs are O(1) at every layer, or with
    ``normalize_variance`` by a per-feature std pooled over both sets (the paper's
    variance normalisation; shared so the probe stays one linear map of the activations).
    The probe p(x) = sigmoid(w·x + b) minimises the mean of
    (p(x+) - (1 - p(x-)))^2 + min(p(x+), p(x-))^2, trained with full-batch Adam from
    ``n_restarts`` random inits (run together, independently); the lowest final loss wins.
    ``l2`` adds 0.5 * l2 * |w|^2 (same unitless scale as in :func:`logistic`); the default
    0 is the paper's objective, but at small n the confidence term rewards ever larger
    weights that fit noise in low-variance directions, and l2 ~ 1e-2 curbs that.
    A constant shift between pos and neg is invisible to CCS: it needs the pairs to
    differ in sign or strength along the direction (as in true/false statements).

    The loss is symmetric in w -> -w, b -> -b, so the sign is fixed label-free by
    :data:`SIGN_RULE`. For statement data (x+ = statement + "True") that orientation is
    right when most statements are true (the truth feature then shifts mean(pos - neg)
    its way); for behaviour data, when the matching completions carry the behaviour.
    Needs n >= 2.
    """
    _check_count(n_restarts, "n_restarts")
    _check_count(steps, "steps")
    _check_positive(lr, "lr")
    _check_positive(l2, "l2", allow_zero=True)
    pos, neg = _check_pairs(pos, neg, min_n=2, caller="ccs")
    xp, xn = pos - pos.mean(0), neg - neg.mean(0)
    centred = torch.cat([xp, xn])
    if not centred.any():
        raise ValueError("pos and neg are each constant across pairs: CCS's per-set centring leaves nothing")
    if normalize_variance:
        std = centred.std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
    else:
        std = centred.pow(2).mean().sqrt()
    weights, (consistency, confidence, objective) = _fit_ccs(
        xp / std, xn / std, n_restarts=n_restarts, steps=steps, lr=lr, seed=seed, l2=l2
    )
    best = int(objective.argmin())
    diffs = pos - neg
    u = _orient(_unit(weights[best] / std, "the CCS probe weight"), diffs.mean(0))
    return _direction(
        "ccs",
        u,
        diffs,
        loss=float(objective[best]),
        consistency_loss=float(consistency[best]),
        confidence_loss=float(confidence[best]),
        restart_losses=objective.tolist(),
        best_restart=best,
        normalize_variance=normalize_variance,
        l2=l2,
        steps=steps,
        lr=lr,
        seed=seed,
        sign_rule=SIGN_RULE,
    )


def _ccs_losses(
    xp: Tensor, xn: Tensor, weights: Tensor, biases: Tensor, l2: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-restart consistency, confidence and penalised total, each of shape [n_restarts]."""
    p_pos = torch.sigmoid(xp @ weights.T + biases)
    p_neg = torch.sigmoid(xn @ weights.T + biases)
    consistency = (p_pos - (1 - p_neg)).pow(2).mean(0)
    confidence = torch.minimum(p_pos, p_neg).pow(2).mean(0)
    return consistency, confidence, consistency + confidence + 0.5 * l2 * weights.pow(2).sum(1)


@torch.inference_mode(False)
@torch.enable_grad()
def _fit_ccs(
    xp: Tensor, xn: Tensor, *, n_restarts: int, steps: int, lr: float, seed: int, l2: float
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Train all restarts at once: summed losses give each restart its own gradient and Adam state."""
    xp, xn = xp.clone(), xn.clone()
    d = xp.shape[1]
    generator = torch.Generator().manual_seed(seed)
    weights = (torch.randn(n_restarts, d, generator=generator, dtype=torch.float64) / d**0.5).requires_grad_()
    biases = torch.zeros(n_restarts, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([weights, biases], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        _ccs_losses(xp, xn, weights, biases, l2)[2].sum().backward()
        opt.step()
    with torch.no_grad():
        return weights.detach(), _ccs_losses(xp, xn, weights, biases, l2)


ESTIMATORS: dict[str, Callable[..., Direction]] = in_order(
    ESTIMATOR_NAMES, {"mean_diff": mean_diff, "pca": pca, "logistic": logistic, "ccs": ccs}, "estimators")


def estimate(name: str, pos: Tensor, neg: Tensor, **kwargs: Any) -> Direction:
    """Run the estimator registered as ``name``; keyword arguments go to it."""
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; choose one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[name](pos, neg, **kwargs)


def _as_unit(direction: Direction | Tensor, d: int) -> Tensor:
    """The float64 unit vector of a Direction (its ``unit``) or of a plain tensor."""
    v = _as_float64(direction.unit if isinstance(direction, Direction) else direction, "direction")
    if v.shape != (d,):
        raise ValueError(f"direction must have shape ({d},) to match the activations, got {tuple(v.shape)}")
    return _unit(v, "direction")


def explained_variance(diffs: Tensor, direction: Direction | Tensor, *, center: bool = False) -> float:
    """Fraction of the paired differences' energy along u.

    Uncentred (second moment, matching ``pca``'s default) unless ``center``; for the
    first principal component this equals its explained-variance ratio.
    """
    diffs = _as_float64(diffs, "diffs")
    if diffs.ndim != 2 or len(diffs) == 0:
        raise ValueError(f"diffs must be 2-D [n, d] with n >= 1, got shape {tuple(diffs.shape)}")
    x = diffs - diffs.mean(0) if center else diffs
    total = x.pow(2).sum()
    if total == 0:
        raise ValueError("diffs have zero " + ("variance" if center else "energy") + ", nothing to explain")
    u = _as_unit(direction, diffs.shape[1])
    return float((x @ u).pow(2).sum() / total)
