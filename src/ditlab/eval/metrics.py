"""FID, sFID, Inception Score, Precision and Recall on feature arrays, computed as ADM's evaluator does
(guided-diffusion ``evaluations/evaluator.py``): statistics in float64, ``scipy.linalg.sqrtm`` with its ε fix,
IS over splits of 5000, k=3 nearest-neighbour manifolds (Kynkäänniemi et al. 2019) on squared distances.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import linalg


class FeatureMoments:
    """Running float64 sums of features and their outer products, so statistics can be accumulated over
    batches and summed over ranks before the mean and covariance are formed."""

    def __init__(self, dim: int):
        self.n = 0
        self.total = np.zeros(dim, np.float64)
        self.outer = np.zeros((dim, dim), np.float64)

    def update(self, features: np.ndarray) -> None:
        x = np.asarray(features, np.float64)
        self.n += len(x)
        self.total += x.sum(0)
        self.outer += x.T @ x

    def merge(self, other: FeatureMoments) -> None:
        self.n += other.n
        self.total += other.total
        self.outer += other.outer

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean, covariance with ddof=1), equal to ``np.mean`` / ``np.cov(rowvar=False)``."""
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mu = self.total / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return mu, sigma


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of (N, D) features in float64 (ADM: ``np.mean``, ``np.cov(rowvar=False)``)."""
    x = np.asarray(features, np.float64)
    if len(x) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(x)}")
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """‖μ1−μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½). If the square root is not finite, ε·I is added to both
    covariances; a complex result whose diagonal's imaginary part exceeds 1e-3 is an error (ADM)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in size: mean {mu1.shape} vs {mu2.shape}, "
                         f"covariance {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))  # ADM passes disp=False (deprecated in SciPy 1.17): same value
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: singular covariance product; adding {eps} to the diagonals", stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(Σ1Σ2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance_to_features(mu: np.ndarray, sigma: np.ndarray, features: np.ndarray) -> float:
    """Fréchet distance between statistics (μ, Σ) and the Gaussian fit of N feature vectors (N, D).

    With N > D this is :func:`frechet_distance` (ADM's sqrtm). With N <= D the sample covariance
    Σₓ = BᵀB/(N−1) (B: centred features) is singular, sqrtm(Σₓ Σ) is ill-posed and ADM's ε fix shifts the
    result; the trace is then taken exactly instead: the non-zero eigenvalues of Σₓ Σ are those of the N×N
    matrix B Σ Bᵀ/(N−1), so Tr(Σₓ Σ)^½ = Σᵢ √λᵢ(B Σ Bᵀ/(N−1)). This takes milliseconds where sqrtm of a
    2048² matrix takes seconds to minutes (FID during training, small test sets).
    """
    x = np.asarray(features, np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {n}")
    if n > d:
        return frechet_distance(*feature_statistics(x), mu, sigma)
    if np.shape(mu) != (d,) or np.shape(sigma) != (d, d):
        raise ValueError(f"statistics of size {np.shape(mu)}, {np.shape(sigma)} do not fit {d}-d features")
    centred = x - x.mean(0)
    small = centred @ np.asarray(sigma, np.float64) @ centred.T / (n - 1)
    eigenvalues = np.linalg.eigvalsh((small + small.T) / 2).clip(min=0)  # PSD up to rounding
    diff = x.mean(0) - mu
    trace_x = np.square(centred).sum() / (n - 1)
    return float(diff.dot(diff) + np.trace(sigma) + trace_x - 2 * np.sqrt(eigenvalues).sum())


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """exp(E_x KL(p(y|x) ‖ p(y))) per split of ``split_size`` images, averaged (50K images: 10 splits)."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(1, keepdims=True)
    probs = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    scores = []
    for i in range(0, len(probs), split_size):
        part = probs[i : i + split_size]
        kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores))


def pairwise_sq_distances(u: torch.Tensor, v: torch.Tensor, half: bool = True) -> torch.Tensor:
    """max(‖u‖² − 2u·v + ‖v‖², 0) for every pair. ``half`` computes in float16 first and falls back to float32
    when that overflows, as ADM's ``DistanceBlock``; the result is float32."""
    def block(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = a.square().sum(1, keepdim=True) - 2 * a @ b.T + b.square().sum(1)[None]
        return d.clamp_min(0).float()

    if half:
        d16 = block(u.half(), v.half())
        if torch.isfinite(d16).all():
            return d16
    return block(u.float(), v.float())


def manifold_radii(features: torch.Tensor, k: int = 3, batch: int = 10000, half: bool = True) -> torch.Tensor:
    """Squared distance of each point to its k-th nearest neighbour (the point itself being the 0-th)."""
    radii = []
    for start in range(0, len(features), batch):
        d = torch.cat([pairwise_sq_distances(features[start : start + batch], features[s : s + batch], half)
                       for s in range(0, len(features), batch)], 1)
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch: int, half: bool) -> torch.Tensor:
    """For each point: is it inside some ball (centre, radius²)?"""
    out = []
    for start in range(0, len(points), batch):
        inside = torch.zeros(len(points[start : start + batch]), dtype=torch.bool, device=points.device)
        for s in range(0, len(centres), batch):
            d = pairwise_sq_distances(points[start : start + batch], centres[s : s + batch], half)
            inside |= (d <= radii[s : s + batch][None]).any(1)
        out.append(inside)
    return torch.cat(out)


def precision_recall(reference: np.ndarray | torch.Tensor, samples: np.ndarray | torch.Tensor, k: int = 3,
                     batch: int = 10000, half: bool = True) -> tuple[float, float]:
    """Improved precision (samples inside the reference manifold) and recall (references inside the sample
    manifold), each manifold the union of balls reaching every point's k-th neighbour (ADM, k=3)."""
    ref, smp = torch.as_tensor(reference).float(), torch.as_tensor(samples).float()
    if len(ref) <= k or len(smp) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points per set "
                         f"(got {len(ref)} reference, {len(smp)} samples)")
    ref_radii, smp_radii = manifold_radii(ref, k, batch, half), manifold_radii(smp, k, batch, half)
    precision = _covered(smp, ref, ref_radii, batch, half).double().mean()
    recall = _covered(ref, smp, smp_radii, batch, half).double().mean()
    return float(precision), float(recall)
