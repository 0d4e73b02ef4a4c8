"""LogME against an independent reference: the closed-form evidence with full D x D matrices,
maximised numerically over (log alpha, log beta) per class, with no eigen tricks, no fixed point."""
import math

import numpy as np
import pytest
import scipy.optimize
import torch

from aft.errors import UserError
from aft.logme import logme


def evidence(f, y, log_alpha, log_beta):
    """Log evidence of y = F w + eps, w ~ N(0, I / alpha), eps ~ N(0, I / beta); posterior mean."""
    n, d = f.shape
    alpha, beta = math.exp(log_alpha), math.exp(log_beta)
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    logdet = np.linalg.slogdet(a)[1]  # includes the zero eigenvalues of F^T F when N < D
    value = (n / 2 * log_beta + d / 2 * log_alpha - n / 2 * math.log(2 * math.pi)
             - beta / 2 * np.sum((y - f @ m) ** 2) - alpha / 2 * m @ m - logdet / 2)
    return value, m


def reference(f, labels, c):
    """Per class: maximise the evidence; returns (score, weights (C, D), log alphas (C,))."""
    grid = [(a, b) for a in range(-8, 17) for b in range(-8, 17)]
    scores, weights, log_alphas = [], [], []
    for k in range(c):
        y = (labels == k).astype(np.float64)
        start = max(grid, key=lambda x: evidence(f, y, *x)[0])  # the optimum may not be unique
        opt = scipy.optimize.minimize(lambda x: -evidence(f, y, *x)[0], x0=start,
                                      method="Nelder-Mead",
                                      options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 5000})
        assert opt.success
        value, m = evidence(f, y, *opt.x)
        scores.append(value / len(y))
        weights.append(m)
        log_alphas.append(opt.x[0])
    return np.mean(scores), np.stack(weights), np.array(log_alphas)


def problem(n, d, c, noise, seed):
    """Features: a random mean per class plus Gaussian noise; every class present."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    labels[:c] = np.arange(c)
    return rng.normal(size=(c, d))[labels] + noise * rng.normal(size=(n, d)), labels


def check_against_reference(f, labels, c):
    score, weights = logme(torch.from_numpy(f), torch.from_numpy(labels), num_classes=c)
    ref_score, ref_weights, _ = reference(f, labels, c)
    assert score == pytest.approx(ref_score, rel=1e-8)
    assert weights.dtype == torch.float32 and weights.shape == (c, f.shape[1])
    np.testing.assert_allclose(weights.numpy(), ref_weights, rtol=1e-5,
                               atol=1e-5 * np.abs(ref_weights).max())


# N > D, and N < D with enough noise for an interior optimum in every class.
@pytest.mark.parametrize("n,d,c,noise", [(200, 20, 3, 1.0), (30, 80, 4, 4.0)])
def test_matches_closed_form_reference(n, d, c, noise):
    check_against_reference(*problem(n, d, c, noise, seed=n), c)


def test_rank_deficient_features_match_reference():
    f, labels = problem(200, 20, 3, 1.0, seed=1)
    f[:, 0] = 0.0          # a dead feature
    f[:, 1] = f[:, 2]      # a duplicated one
    check_against_reference(f, labels, 3)
    # A duplicated sample makes F F^T singular. Its two copies have different labels (0 and 1),
    # so no y_c lies in the column space of F and the evidence stays bounded.
    f, labels = problem(30, 80, 2, 4.0, seed=1)
    f[1] = f[0]
    check_against_reference(f, labels, 2)


def test_n_below_d_evidence_counts_zero_eigenvalues():
    # When N < D, F^T F has D - N zero eigenvalues, each adding log(alpha) to the log determinant;
    # the reference implementation of LogME drops them. At the optimum that term is far from
    # negligible, and the score must agree with the evidence that includes it.
    n, d, c = 30, 80, 4
    f, labels = problem(n, d, c, 4.0, seed=2)
    score, _ = logme(torch.from_numpy(f), torch.from_numpy(labels))
    ref_score, _, log_alphas = reference(f, labels, c)
    dropped_term = np.mean((d - n) / 2 * log_alphas / n)
    assert abs(dropped_term) > 1e-2 * abs(ref_score)
    assert score == pytest.approx(ref_score, rel=1e-8)


def test_noise_free_limit_when_n_below_d():
    # With little noise and N < D, the evidence is highest as beta -> infinity: y = F w exactly,
    # y ~ N(0, F F^T / alpha), whose evidence, maximised over alpha (at N / y^T (F F^T)^-1 y), is:
    n, d, c = 30, 80, 4
    f, labels = problem(n, d, c, 0.5, seed=3)
    gram = f @ f.T
    limits = []
    for k in range(c):
        y = (labels == k).astype(np.float64)
        alpha = n / (y @ np.linalg.solve(gram, y))
        limits.append((n * math.log(alpha) - np.linalg.slogdet(gram)[1] - n
                       - n * math.log(2 * math.pi)) / 2 / n)
    score, _ = logme(torch.from_numpy(f), torch.from_numpy(labels))
    assert score == pytest.approx(np.mean(limits), rel=1e-7)


def test_useless_features_limit():
    # Features whose sum over every class is zero carry no linear information about the labels:
    # the optimum is alpha -> infinity (w = 0) and y ~ N(0, I / beta), beta = N / ||y||^2.
    n, c = 200, 4
    f, labels = problem(n, 10, c, 1.0, seed=4)
    for k in range(c):
        f[labels == k] -= f[labels == k].mean(0)
    counts = np.bincount(labels)
    limit = np.mean(-(np.log(2 * math.pi * counts / n) + 1) / 2)
    score, weights = logme(torch.from_numpy(f), torch.from_numpy(labels))
    assert score == pytest.approx(limit, rel=1e-7)
    assert weights.abs().max() < 1e-6


def test_informative_labels_score_higher_than_shuffled():
    rng = np.random.default_rng(5)
    f = torch.from_numpy(rng.normal(size=(500, 32)))
    labels = torch.argmax(f @ torch.from_numpy(rng.normal(size=(32, 5))), dim=1)
    shuffled = labels[torch.from_numpy(rng.permutation(500))]
    assert logme(f, labels)[0] > logme(f, shuffled)[0] + 0.05


@pytest.mark.parametrize("n,d", [(300, 40), (40, 120)])
def test_float32_input_matches_float64(n, d):
    f, labels = problem(n, d, 5, 2.0, seed=6)
    f, labels = torch.from_numpy(f), torch.from_numpy(labels)
    s32, w32 = logme(f.float(), labels)
    s64, w64 = logme(f, labels)
    assert s32 == pytest.approx(s64, rel=1e-5)
    torch.testing.assert_close(w32, w64, rtol=1e-4, atol=1e-5 * w64.abs().max().item())


def test_absent_class_is_left_out():
    f, labels = problem(200, 20, 3, 1.0, seed=7)
    f, labels = torch.from_numpy(f), torch.from_numpy(labels)
    score, weights = logme(f, labels)
    # Classes 3 and 4 never occur: same score and weights for the others, zero weights for them.
    score5, weights5 = logme(f, labels, num_classes=5)
    assert score5 == pytest.approx(score, rel=1e-12)
    torch.testing.assert_close(weights5[:3], weights)
    assert not weights5[3:].any()


def test_labels_out_of_range_are_refused():
    f = torch.randn(10, 3)
    with pytest.raises(UserError, match="labels must lie in 0..1"):
        logme(f, torch.arange(10) % 3, num_classes=2)
