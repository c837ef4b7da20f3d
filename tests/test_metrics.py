"""ADM metrics on features: FID/sFID math, Inception Score, Precision/Recall, ADM npz round trip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ditlab.eval.metrics import (
    FeatureMoments,
    feature_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
)
from ditlab.eval.reference import iter_npz_batches, npz_keys, npz_length, write_npz


def test_fid_of_a_set_with_itself_is_zero():
    feats = np.random.default_rng(0).normal(size=(300, 16))
    mu, sigma = feature_statistics(feats)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_fid_between_gaussians_equals_the_closed_form():
    # Diagonal covariances: ||mu1-mu2||^2 + sum(a + b - 2 sqrt(ab)).
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = 1 + 4 + 0.25 + (1 + 9 - 6) + (4 + 1 - 4) + 0.0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # Full covariances that commute: Sigma2 = 4 Sigma1 -> trace term is Tr(S1 + 4 S1 - 2*2 S1) = Tr(S1).
    m = np.random.default_rng(1).normal(size=(5, 5))
    s1 = m @ m.T + np.eye(5)
    assert frechet_distance(mu1[:1] * 0, s1, mu1[:1] * 0, 4 * s1) == pytest.approx(np.trace(s1), rel=1e-8)


def test_fid_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="differ in size"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streamed_moments_equal_numpy_cov_in_float64():
    feats = np.random.default_rng(2).normal(3.0, 2.0, size=(257, 8)).astype(np.float32)
    first, second = FeatureMoments(8), FeatureMoments(8)
    first.update(feats[:100])
    second.update(feats[100:])
    first.merge(second)  # as if two ranks were summed
    mu, sigma = first.statistics()
    np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-12)


def test_inception_score_uniform_is_one_and_confident_diverse_is_k():
    assert inception_score(np.zeros((20, 10)), split_size=10) == pytest.approx(1.0)
    one_hot = 50.0 * np.eye(10)[np.arange(20) % 10]  # each split of 10 sees every class once
    assert inception_score(one_hot, split_size=10) == pytest.approx(10.0, rel=1e-6)
    same_class = 50.0 * np.eye(10)[np.zeros(20, int)]  # confident but not diverse
    assert inception_score(same_class, split_size=10) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("half", [True, False])
def test_precision_recall_on_points_with_known_answers(half):
    line = np.stack([np.arange(20.0), np.zeros(20)], 1)  # reference: 0, 1, ..., 19 on a line
    far = line[:10] + np.array([1000.0, 0.0])
    samples = np.concatenate([line[:10], far])
    # Precision: the 10 copies lie in the reference manifold, the far points do not -> 0.5.
    # Recall: sample balls reach their 3rd neighbour: the ball at 9 (radius 3) covers 10..12, the ball at 8
    # (radius 2) covers 10; so reference points 0..12 are covered -> 13/20.
    precision, recall = precision_recall(line, samples, k=3, half=half)
    assert precision == pytest.approx(0.5) and recall == pytest.approx(13 / 20)
    assert precision_recall(line, line, k=3, half=half) == (1.0, 1.0)
    assert precision_recall(line, line + 1e4, k=3, half=half) == (0.0, 0.0)


def test_precision_recall_needs_more_than_k_points():
    with pytest.raises(ValueError, match="needs more than 3 points"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


def test_adm_npz_round_trip_streams_batches(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)
    labels = np.arange(7) % 3
    path = write_npz(tmp_path / "s.npz", images, labels)
    assert npz_keys(path) == ["arr_0", "arr_1"] and npz_length(path) == 7
    batches = list(iter_npz_batches(path, 3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert np.array_equal(np.concatenate(batches), images)
    with np.load(path) as f:
        assert np.array_equal(f["arr_1"], labels) and f["arr_0"].dtype == np.uint8
    with pytest.raises(ValueError, match="uint8"):
        write_npz(tmp_path / "bad.npz", images.astype(np.float32))
    with pytest.raises(ValueError, match="no 'arr_2'"):
        next(iter_npz_batches(path, 3, key="arr_2"))


class TinyFeatures(torch.nn.Module):
    """Stands in for the Inception in plumbing tests: fixed random projections of the pixels."""

    has_logits = True

    def __init__(self, weights_file=None):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(4 * 4 * 3, 6, generator=g), requires_grad=False)
        self.calls = 0
        self.weights_file = weights_file

    def forward(self, images):
        self.calls += 1
        x = images.float().flatten(1) / 255 @ self.w
        return {"pool": x, "spatial": x[:, :3], "logits": x[:, :5]}


def test_evaluate_caches_reference_and_prefers_its_stored_statistics(tmp_path, monkeypatch):
    import ditlab.eval.score as score_mod
    from ditlab.eval.evaluate import EvaluateConfig, run_evaluate

    rng = np.random.default_rng(4)
    ref = write_npz(tmp_path / "ref.npz", rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8))
    smp = write_npz(tmp_path / "smp.npz", rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8))
    (tmp_path / "w.pth").write_bytes(b"weights stand-in")
    net = TinyFeatures(tmp_path / "w.pth")
    monkeypatch.setattr(score_mod, "load_fid_inception", lambda path, device: net)
    score_mod.cached_inception.cache_clear()
    config = EvaluateConfig(samples=str(smp), reference=str(ref), inception=str(tmp_path / "w.pth"), batch_size=4,
                            split_size=5, device="cpu", progress=False)
    first = run_evaluate(config)
    assert net.calls == 3 + 3  # reference and samples
    second = run_evaluate(config)
    assert net.calls == 6 + 3  # the reference came from the cache
    assert first == second and first["num_reference"] == 12 and first["fid"] > 0
    with torch.no_grad():
        feats = net(torch.from_numpy(np.load(smp)["arr_0"]))
    assert first["inception_score"] == pytest.approx(inception_score(feats["logits"].numpy(), 5))
    # ADM reads mu/sigma/mu_s/sigma_s from the reference npz when it has them.
    with np.load(ref) as f:
        images = f["arr_0"]
    stats = {"mu": np.zeros(6), "sigma": np.eye(6), "mu_s": np.zeros(3), "sigma_s": np.eye(3)}
    with open(tmp_path / "ref2.npz", "wb") as f:
        np.savez(f, arr_0=images, **stats)
    third = run_evaluate(dataclasses.replace(config, reference=str(tmp_path / "ref2.npz")))
    mu, sigma = feature_statistics(feats["pool"].numpy())
    assert third["fid"] == pytest.approx(frechet_distance(mu, sigma, stats["mu"], stats["sigma"]))
    assert third["precision"] == first["precision"]  # P/R still use the reference images
    score_mod.cached_inception.cache_clear()


def test_evaluate_command_errors_are_one_line(tmp_path, monkeypatch, capsys):
    import ditlab.eval.inception as inception_mod
    import ditlab.eval.score as score_mod
    from ditlab.cli import main

    monkeypatch.delenv("DITLAB_INCEPTION", raising=False)
    monkeypatch.setattr(inception_mod, "fid_helper_weights", lambda: None)  # as without ditlab[fid]
    score_mod.cached_inception.cache_clear()
    path = write_npz(tmp_path / "s.npz", np.zeros((4, 4, 4, 3), np.uint8))
    assert main(["evaluate", "--samples", str(path), "--reference", str(path)]) == 2
    assert "DITLAB_INCEPTION" in capsys.readouterr().err
    assert main(["evaluate", "--samples", str(tmp_path / "none.npz"), "--reference", str(path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_frechet_distance_to_few_features_is_exact_and_equals_adm_when_full_rank():
    from ditlab.eval.metrics import frechet_distance_to_features

    rng = np.random.default_rng(7)
    ref = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 6))
    mu, sigma = feature_statistics(ref)
    full = rng.standard_normal((30, 6)) + 0.5
    assert frechet_distance_to_features(mu, sigma, full) == frechet_distance(*feature_statistics(full), mu, sigma)
    few = rng.standard_normal((4, 6)) * 2  # rank-3 covariance: sqrtm(Σx Σ) is singular
    # Exact: Tr(Σx Σ)^½ = Σ √λ(Σx^½ Σ Σx^½), with Σx^½ from its eigendecomposition.
    mu_x, sigma_x = feature_statistics(few)
    w, v = np.linalg.eigh(sigma_x)
    root = (v * np.sqrt(w.clip(min=0))) @ v.T
    trace = np.sqrt(np.linalg.eigvalsh(root @ sigma @ root).clip(min=0)).sum()
    exact = np.square(mu_x - mu).sum() + np.trace(sigma_x) + np.trace(sigma) - 2 * trace
    assert frechet_distance_to_features(mu, sigma, few) == pytest.approx(exact, rel=1e-7)
