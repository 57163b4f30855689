"""Estimators recover planted directions, follow the shared conventions, and fail clearly."""

from __future__ import annotations

import json

import pytest
import torch

from steerft.extract.estimators import ESTIMATORS, ccs, estimate, explained_variance, logistic, mean_diff, pca
from steerft.extract.scoring import cosine_similarity_matrix, pair_accuracy, relative_norm, truth_accuracy
from steerft.extract.report import LayerReport, write_report

D = 32


@pytest.fixture(scope="module")
def basis() -> torch.Tensor:
    """Orthonormal columns: 0 = the planted direction, 1 = a token offset, 2:6 = nuisance axes."""
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=generator, dtype=torch.float64))
    return q


def planted(
    basis: torch.Tensor, n: int, *, true_fraction: float = 0.75, token_offset: float = 0.0, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Statement-style pairs: pos_i - neg_i = ±2 u (+ noise), + for a ``true_fraction`` of items.

    Prompt content is shared by both rows of a pair and is large along the nuisance axes;
    each completion adds its own noise, also largest along the nuisance axes. The token
    offset is a constant pos/neg shift orthogonal to u (the "True"/"False" token).
    """
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    u, token, nuisance = basis[:, 0], basis[:, 1], basis[:, 2:6]
    labels = torch.rand(n, generator=generator, dtype=torch.float64) < true_fraction
    strength = (labels.double() * 2 - 1) * (1 + 0.2 * randn(n))
    prompt = 5 * randn(n, 4) @ nuisance.T + 0.1 * randn(n, D)

    def completion_noise() -> torch.Tensor:
        return randn(n, 4) @ nuisance.T + 0.1 * randn(n, D)

    pos = prompt + strength[:, None] * u + token_offset * token + completion_noise()
    neg = prompt - strength[:, None] * u - token_offset * token + completion_noise()
    return pos.float(), neg.float(), labels


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def test_mean_diff_is_the_plain_mean_of_differences(basis):
    pos, neg, _ = planted(basis, 50)
    direction = mean_diff(pos, neg)
    torch.testing.assert_close(direction.vector, (pos - neg).mean(0))
    assert direction.vector.dtype == torch.float32


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_recovers_planted_direction_with_the_documented_sign(basis, name):
    pos, neg, _ = planted(basis, 300)
    direction = estimate(name, pos, neg)
    # Most items are "true", so every sign convention (ccs's label-free rule included) points along +u.
    assert cosine(direction.unit, basis[:, 0]) > 0.9
    json.dumps(direction.info)


def test_a_constant_shift_is_found_by_supervised_estimators_but_removed_by_centring(basis):
    pos, neg, _ = planted(basis, 200, true_fraction=1.0)
    u = basis[:, 0]
    for name in ("mean_diff", "pca", "logistic"):
        assert cosine(estimate(name, pos, neg).unit, u) > 0.95
    assert abs(cosine(pca(pos, neg, center=True).unit, u)) < 0.5


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_scale_convention_is_the_mean_difference_projected_on_the_unit_direction(basis, name):
    pos, neg, _ = planted(basis, 100, seed=2)
    direction = estimate(name, pos, neg)
    m = (pos - neg).double().mean(0)
    u = direction.unit.double()
    assert float(u.norm()) == pytest.approx(1.0, abs=1e-6)
    assert direction.scale == pytest.approx(float(u @ m), rel=1e-5)
    torch.testing.assert_close(direction.vector.double(), u * (u @ m), rtol=1e-5, atol=1e-6)
    assert float(direction.vector.double() @ m) >= 0


def test_pca_sign_follows_the_mean_difference_and_reports_its_variance_ratio(basis):
    pos, neg, _ = planted(basis, 100)
    forward, backward = pca(pos, neg), pca(neg, pos)
    assert float(forward.unit.double() @ (pos - neg).double().mean(0)) > 0
    torch.testing.assert_close(backward.unit, -forward.unit)
    ratio = forward.info["explained_variance_ratio"]
    assert ratio == pytest.approx(explained_variance(pos - neg, forward))
    diffs = (pos - neg).double()
    top = torch.linalg.eigh(diffs.T @ diffs).eigenvalues[-1]
    assert ratio == pytest.approx(float(top / diffs.pow(2).sum()), rel=1e-6)


def test_ccs_sign_rule_tracks_the_majority_of_statements(basis):
    """A "True"/"False" token offset dominates mean_diff; CCS ignores it and finds truth.

    The label-free sign is right when most statements are true and wrong when most
    are false; the best-sign accuracy is high either way.
    """
    u = basis[:, 0]
    for true_fraction, sign in ((0.75, 1.0), (0.25, -1.0)):
        pos, neg, _ = planted(basis, 300, true_fraction=true_fraction, token_offset=2.0, seed=3)
        test = planted(basis, 200, true_fraction=true_fraction, token_offset=2.0, seed=4)
        direction = ccs(pos, neg)
        assert sign * cosine(direction.unit, u) > 0.9
        assert abs(cosine(mean_diff(pos, neg).unit, u)) < 0.5
        assert "sign_rule" in direction.info
        own_sign = truth_accuracy(direction, *test)
        assert (own_sign > 0.9) if sign > 0 else (own_sign < 0.1)
        assert truth_accuracy(direction, *test, best_sign=True) > 0.9


def test_ccs_l2_curbs_overfitting_at_small_n(basis):
    pos, neg, _ = planted(basis, 40)
    plain, regularised = ccs(pos, neg), ccs(pos, neg, l2=1e-2)
    assert cosine(regularised.unit, basis[:, 0]) > cosine(plain.unit, basis[:, 0])
    assert cosine(regularised.unit, basis[:, 0]) > 0.95


def test_ccs_is_deterministic_for_a_seed(basis):
    pos, neg, _ = planted(basis, 60)
    first, second = ccs(pos, neg, seed=5, steps=200), ccs(pos, neg, seed=5, steps=200)
    torch.testing.assert_close(first.vector, second.vector, rtol=0, atol=0)
    assert first.info["restart_losses"] == second.info["restart_losses"]


def test_logistic_works_under_inference_mode(basis):
    pos, neg, _ = planted(basis, 100, true_fraction=1.0)
    with torch.inference_mode():
        direction = logistic(pos, neg)
    assert cosine(direction.unit, basis[:, 0]) > 0.95
    assert direction.info["grad_norm"] < 1e-4


def test_pair_accuracy_counts_pairs_separated_by_the_direction():
    pos = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [2.0, 5.0]])
    neg = torch.zeros(4, 2)
    assert pair_accuracy(torch.tensor([1.0, 0.0]), pos, neg) == pytest.approx(0.5)
    assert pair_accuracy(mean_diff(pos, neg), pos, neg) == pytest.approx(0.75)


def test_truth_accuracy_uses_the_training_mean_projection_as_threshold():
    pos = torch.tensor([[3.0, 0.0], [2.0, 0.0], [0.5, 0.0], [-1.0, 0.0]])
    neg = torch.zeros(4, 2)
    direction = mean_diff(pos, neg)  # scale = mean projection = 1.125
    labels = [1, 1, 0, 0]
    assert truth_accuracy(direction, pos, neg, labels) == 1.0
    assert truth_accuracy(direction, pos, neg, labels, bias=2.5) == 0.75
    assert truth_accuracy(direction, pos, neg, [0, 0, 1, 1], best_sign=True) == 1.0


def test_cosine_matrix_and_relative_norm():
    names, matrix = cosine_similarity_matrix(
        {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.0, 2.0]), "c": torch.tensor([-3.0, 0.0])}
    )
    assert names == ["a", "b", "c"]
    expected = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(matrix, expected)
    assert relative_norm(torch.tensor([3.0, 4.0]), 10.0) == pytest.approx(0.5)


def _pairs(n: int = 4, d: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=generator), torch.randn(n, d, generator=generator)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p, n: mean_diff(p[0], n), "pos must be 2-D"),
        (lambda p, n: mean_diff(p, n[:, None]), "neg must be 2-D"),
        (lambda p, n: mean_diff(p, n[:3]), "pos and neg must have the same shape"),
        (lambda p, n: mean_diff(p.long(), n), "pos must be a floating-point tensor"),
        (lambda p, n: mean_diff(p, n.index_fill(0, torch.tensor([1]), float("nan"))), "neg contains NaN"),
        (lambda p, n: mean_diff(p[:0], n[:0]), "at least 1 pairs"),
        (lambda p, n: mean_diff(p, p), r"mean\(pos - neg\) is zero"),
        (lambda p, n: pca(p[:1], n[:1]), "pca needs at least 2 pairs"),
        (lambda p, n: logistic(p[:1], n[:1]), "logistic needs at least 2 pairs"),
        (lambda p, n: ccs(p[:1], n[:1]), "ccs needs at least 2 pairs"),
        (lambda p, n: logistic(p, n, l2=0.0), "l2 must be a finite number > 0"),
        (lambda p, n: ccs(p, n, l2=-1.0), "l2 must be a finite number >= 0"),
        (lambda p, n: ccs(p, n, n_restarts=0), "n_restarts must be an integer >= 1"),
        (lambda p, n: ccs(p, n, lr=float("inf")), "lr must be a finite number > 0"),
        (lambda p, n: estimate("svd", p, n), r"unknown estimator 'svd'; choose one of \['ccs', 'logistic'"),
        (lambda p, n: pair_accuracy(torch.ones(2), p, n), r"direction must have shape \(3,\)"),
        (lambda p, n: truth_accuracy(mean_diff(p, n), p, n, [1, 0]), r"labels must have shape \(4,\)"),
        (lambda p, n: truth_accuracy(mean_diff(p, n), p, n, [0, 1, 2, 1]), "labels must be 0/1"),
        (lambda p, n: relative_norm(p[0], 0.0), "residual_norm must be a finite number > 0"),
        (lambda p, n: cosine_similarity_matrix({"a": p[0], "b": p[0, :2]}), r"vectors\['b'\] needs shape"),
        (lambda p, n: cosine_similarity_matrix({"a": torch.zeros(3)}), r"vectors\['a'\] is zero"),
    ],
)
def test_invalid_input_raises_value_error_naming_the_argument(call, message):
    pos, neg = _pairs()
    with pytest.raises(ValueError, match=message):
        call(pos, neg)


def test_report_writes_valid_json_and_png(basis, tmp_path):
    reports, vectors = [], {}
    for layer, seed in enumerate((1, 2, 3)):
        pos, neg, _ = planted(basis, 60, seed=seed)
        test_pos, test_neg, _ = planted(basis, 40, seed=seed + 10)
        residual_norm = float(torch.cat([pos, neg]).norm(dim=1).mean())
        for name in ("mean_diff", "pca", "ccs"):
            direction = estimate(name, pos, neg, **({"steps": 200} if name == "ccs" else {}))
            reports.append(
                LayerReport.from_direction(
                    layer,
                    direction,
                    train=(pos, neg),
                    residual_norm=residual_norm,
                    heldout=(test_pos, test_neg),
                )
            )
            vectors[f"{name}/L{layer}"] = direction.vector

    json_path, png_path = write_report(reports, vectors, tmp_path / "out", title="planted")

    payload = json.loads(json_path.read_text())
    assert payload["title"] == "planted"
    assert len(payload["reports"]) == 9
    first = payload["reports"][0]
    assert {"layer", "estimator", "heldout_accuracy", "relative_norm"} <= set(first)
    assert payload["cosine_similarity"]["names"] == list(vectors)
    assert len(payload["cosine_similarity"]["matrix"]) == 9
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.png"]
