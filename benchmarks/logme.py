"""Time aft.logme against the usual per-class NumPy LogME on the same features; print a JSON line.

    python benchmarks/logme.py                     # N=50,000, D=1,536, C=100: a few minutes on CPU
    python benchmarks/logme.py --n 2000 --d 64 --c 5

The baseline is the usual shape of LogME code: one decomposition per call, then a loop over classes,
each iterating MacKay's fixed point with a pass over F per step (for F m). It computes the exact
evidence (with the (D - k) log(alpha) term), so both scores must agree to about 1e-6.
"""
import argparse
import math
import time

# first: it finds the project's Python (no environment need be active) and keeps the hub offline
from common import emit

import numpy as np
import torch

from aft.logme import logme


def logme_numpy_per_class(features, labels, num_classes, max_iter=1000, tol=1e-6):
    f = features.astype(np.float64)
    n, d = f.shape
    if n >= d:
        sigma, v = np.linalg.eigh(f.T @ f)
        sigma = sigma.clip(min=0)
    else:
        _, s, vt = np.linalg.svd(f, full_matrices=False)
        sigma, v = s**2, vt.T
    k = len(sigma)
    scores = []
    for c in range(num_classes):
        y = (labels == c).astype(np.float64)
        g = v.T @ (f.T @ y)
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            lam = alpha / beta
            gamma = (sigma / (sigma + lam)).sum()
            m = v @ (g / (sigma + lam))
            m2, res = m @ m, ((y - f @ m) ** 2).sum()
            alpha, beta = gamma / m2, (n - gamma) / res
            if abs(alpha / beta - lam) <= tol * lam:
                break
        m = v @ (g / (sigma + alpha / beta))
        m2, res = m @ m, ((y - f @ m) ** 2).sum()
        logdet = np.log(alpha + beta * sigma).sum() + (d - k) * math.log(alpha)
        evidence = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
                    - beta / 2 * res - alpha / 2 * m2 - logdet / 2)
        scores.append(evidence / n)
    return float(np.mean(scores))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=1_536)
    parser.add_argument("--c", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # Labels that depend linearly on the features, plus noise, as for a useful pre-trained model.
    rng = np.random.default_rng(args.seed)
    features = rng.standard_normal((args.n, args.d), dtype=np.float32)
    logits = features @ rng.standard_normal((args.d, args.c), dtype=np.float32) / math.sqrt(args.d)
    labels = np.argmax(logits + rng.standard_normal(logits.shape, dtype=np.float32), axis=1)

    start = time.perf_counter()
    score_ours, _ = logme(torch.from_numpy(features), torch.from_numpy(labels), num_classes=args.c)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    score_numpy = logme_numpy_per_class(features, labels, args.c)
    numpy_s = time.perf_counter() - start

    emit({
        "bench": "logme", "n": args.n, "d": args.d, "c": args.c,
        "ours_s": round(ours_s, 3), "numpy_per_class_s": round(numpy_s, 3),
        "speedup": round(numpy_s / ours_s, 1),
        "score_ours": score_ours, "score_numpy": score_numpy,
        "rel_diff": abs(score_ours - score_numpy) / abs(score_numpy),
    })


if __name__ == "__main__":
    main()
