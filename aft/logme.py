"""LogME (You et al., ICML 2021; the fixed-point equations of arXiv 2110.10545).

Why it is written this way:
- Every class shares the features F, so one eigen-decomposition (of F^T F, or of the smaller F F^T
  when N < D) serves all classes. After it, a class is summarised by its squared projections onto
  the eigenvectors, and evaluating the fixed-point updates for all classes costs O(C min(N, D)),
  with no pass over F per class and per iteration as in the reference code.
- The widely used reference implementation drops the (D - k) log(alpha) term that the D - k zero
  eigenvalues of F^T F add to log det(alpha I + beta F^T F) when N < D, so its evidence is wrong
  there; here the evidence is the exact one.
- The optimum satisfies lam = alpha(lam) / beta(lam), lam = alpha / beta, where alpha(lam) and
  beta(lam) are MacKay's updates. Iterating that map converges linearly, at rates close to 1 per
  step when N < D (hundreds of steps, measured), and for some classes the optimum is a limit
  (lam -> 0: a noise-free fit; lam -> inf: all-zero weights) that it only creeps towards. So the
  same equation is solved by bisection on log(lam), from the best point of a coarse grid of the
  evidence (which also picks the global optimum when there are several): a fixed number of cheap
  steps to a known precision, the same for every class. lam is kept within a range (_LAM_SPAN)
  that covers those limits; it also keeps the score finite in the one case where the evidence has
  no maximum: y_c exactly in the column space of a rank-deficient F (say, duplicated samples with
  the same label when N < D), where it grows without bound as lam -> 0.
- float64 throughout: the evidence is a difference of large terms, and float32 loses digits.
"""
import math

import torch

from aft.errors import UserError

# lam is searched from 1e-8 times the smallest nonzero eigenvalue of F^T F to 1e8 times the
# largest: beyond those, the evidence equals its limit at 0 or infinity to about 1e-8 relative.
_LAM_SPAN = 1e8
_GRID_PER_DECADE = 4


def logme(features, labels, num_classes=None, max_iter=100, tol=1e-6):
    """Score how well `features` (N, D) linearly predict one-hot `labels` (N,) by Bayesian evidence.

    Returns (score, weights): score is the mean over classes of the maximised log evidence per
    sample; weights (C, D, float32, CPU) are the posterior means m of the per-class linear models.
    lam = alpha / beta is found to relative precision `tol`, in at most `max_iter` bisection steps.
    A class with no sample has no evidence to speak of: it is left out of the mean, with weights 0.
    """
    f = features.detach().to(torch.float64)
    if f.dim() != 2 or labels.shape != (f.shape[0],):
        raise UserError(f"logme needs features (N, D) and labels (N,), got {tuple(f.shape)} "
                        f"and {tuple(labels.shape)}")
    labels = labels.to(f.device, torch.int64)
    n, d = f.shape
    k = min(n, d)
    c = int(labels.max()) + 1 if num_classes is None else num_classes
    if labels.min() < 0 or labels.max() >= c:
        raise UserError(f"labels must lie in 0..{c - 1}, "
                        f"got {int(labels.min())}..{int(labels.max())}")

    counts = torch.bincount(labels, minlength=c)
    present = counts > 0
    # Classes are renumbered 0..C'-1 over the present ones so that absent ones cost nothing.
    cls = torch.cumsum(present, 0)[labels] - 1
    cp = int(present.sum())

    def drop_rounding(sigma):
        # Eigenvalues at rounding level are zero ones; dividing by them would only amplify noise.
        return torch.where(sigma > sigma.max() * max(n, d) * torch.finfo(f.dtype).eps, sigma, 0.0)

    # One eigen-decomposition for all classes. sigma: the k eigenvalues of F^T F (or F F^T);
    # p[c, i]: squared projection of y_c onto the i-th left singular vector of F; r0[c]: the part
    # of ||y_c||^2 outside the column space of F, which no weights can fit.
    if n >= d:
        sigma, v = torch.linalg.eigh(f.T @ f)
        sigma = drop_rounding(sigma)
        fy = torch.zeros(cp, d, dtype=f.dtype, device=f.device).index_add_(0, cls, f)  # F^T y
        g = fy @ v  # V^T F^T y
        p = torch.where(sigma > 0, g**2 / sigma, 0.0)
        r0 = (counts[present].to(f.dtype) - p.sum(1)).clamp(min=0)
    else:
        sigma, u = torch.linalg.eigh(f @ f.T)
        sigma = drop_rounding(sigma)
        z = torch.zeros(cp, n, dtype=f.dtype, device=f.device).index_add_(0, cls, u)  # U^T y
        p = z**2
        r0 = torch.zeros(cp, dtype=f.dtype, device=f.device)  # U spans R^N: y is fully in it
    if not (sigma > 0).any():
        raise UserError("logme: the features are all zero")

    def stats(lam):
        """gamma (effective number of parameters), N - gamma, ||m||^2 and ||y - F m||^2 per class.

        They depend on alpha, beta only through lam = alpha / beta, as m = (F^T F + lam I)^-1 F^T y.
        """
        lam = lam[:, None]
        gamma = (sigma / (lam + sigma)).sum(1)
        n_gamma = (n - k) + (lam / (lam + sigma)).sum(1)  # N - gamma, without cancellation
        m2 = (sigma * p / (lam + sigma) ** 2).sum(1)
        res = r0 + (lam**2 * p / (lam + sigma) ** 2).sum(1)
        return gamma, n_gamma, m2, res

    # Grid of log(lam), scored by the evidence with beta maximised in closed form
    # (beta = N / (||y - F m||^2 + lam ||m||^2)), up to terms that do not depend on lam.
    positive = sigma[sigma > 0]
    t_lo = math.log(positive.min() / _LAM_SPAN)
    t_hi = math.log(positive.max() * _LAM_SPAN)
    steps = int((t_hi - t_lo) / math.log(10) * _GRID_PER_DECADE) + 1
    t = torch.linspace(t_lo, t_hi, steps, dtype=f.dtype, device=f.device)
    lam = t.exp()
    fit = r0[:, None] + p @ (lam / (lam + sigma[:, None]))  # (C, G)
    profile = -n / 2 * fit.log() - torch.log1p(sigma[:, None] / lam).sum(0) / 2
    best = profile.argmax(1)
    lo, hi = t[(best - 1).clamp(min=0)], t[(best + 1).clamp(max=steps - 1)]

    # Bisection on the fixed-point equation. Where MacKay's updates ask for a larger lam than the
    # current one, the evidence still rises with lam, so the optimum lies above: the derivative
    # of the profile above in log(lam) is (gamma res - (N - gamma) lam m2) / (2 res + 2 lam m2).
    for _ in range(max_iter):
        if (hi - lo).max() <= tol:
            break
        mid = (lo + hi) / 2
        gamma, n_gamma, m2, res = stats(mid.exp())
        alpha, beta = gamma / m2, n_gamma / res
        rises = alpha / beta > mid.exp()
        lo, hi = torch.where(rises, mid, lo), torch.where(rises, hi, mid)
    lam = ((lo + hi) / 2).exp()

    # The evidence at lam, with beta at its optimum for that lam (the fixed point's own value at an
    # interior optimum, and the right one at an end of the range).
    _, _, m2, res = stats(lam)
    beta = n / (res + lam * m2)
    alpha = lam * beta
    logdet = torch.log(alpha[:, None] + beta[:, None] * sigma).sum(1) + (d - k) * torch.log(alpha)
    evidence = (n / 2 * torch.log(beta) + d / 2 * torch.log(alpha) - n / 2 * math.log(2 * math.pi)
                - beta / 2 * res - alpha / 2 * m2 - logdet / 2)

    # Posterior mean m = (F^T F + lam I)^-1 F^T y, in the eigenbasis; F^T y has no component along
    # a zero eigenvalue, so rounding noise there is dropped, not amplified.
    shrink = torch.where(sigma > 0, 1 / (lam[:, None] + sigma), 0.0)
    m = (g * shrink) @ v.T if n >= d else ((z * shrink) @ u.T) @ f
    weights = torch.zeros(c, d, dtype=torch.float32)
    weights[present.cpu()] = m.float().cpu()
    return (evidence / n).mean().item(), weights
