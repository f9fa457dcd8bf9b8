"""Datasets (digits, mnist, fashion_mnist, shapes, imagefolder), their held-out splits, and deterministic,
resumable, rank-sharded step batching."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from harness.config import DataConfig
from harness.data import (
    StepBatches,
    TensorImageDataset,
    build_dataset,
    center_crop_arr,
    dataset_num_classes,
    validate_data,
)
from toolkit.errors import ConfigError


@pytest.fixture(scope="module")
def digits16():
    return build_dataset(DataConfig(name="digits", resolution=16), channels=3)


def small_dataset(n: int = 50) -> TensorImageDataset:
    """Image i is constant i/n except a bright left column, so the index and the flip can be read back."""
    images = (torch.arange(n, dtype=torch.float32) / n).view(n, 1, 1, 1).repeat(1, 3, 4, 4)
    images[:, :, :, 0] = 1.0
    return TensorImageDataset(images, torch.arange(n) % 10, num_classes=10)


def fg_spectrum(images: torch.Tensor) -> torch.Tensor:
    """Colour- and translation-invariant features: |FFT| of the foreground mask (background = a corner)."""
    diff = (images - images[:, :, :1, :1]).abs().sum(1)
    mask = diff / diff.flatten(1).amax(1).clamp(min=1e-6).view(-1, 1, 1)
    spec = torch.fft.fft2(mask).abs().flatten(1)
    return spec / spec.norm(dim=1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# grey datasets: digits, mnist, fashion_mnist
# ---------------------------------------------------------------------------------------------
def test_digits_are_the_real_scikit_learn_digits_with_every_fifth_held_out(digits16):
    from sklearn.datasets import load_digits

    ds = digits16
    assert len(ds) == 1438 and ds.num_classes == 10 and ds.channels == 3
    images, labels = ds.all_images()
    assert images.shape == (1438, 3, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.long and sorted(labels.unique().tolist()) == list(range(10))
    assert images.min().item() == pytest.approx(-1.0, abs=1e-3)
    assert images.max().item() == pytest.approx(1.0, abs=1e-2)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])  # grey, replicated
    ref = load_digits()
    train = np.arange(1797) % 5 != 4
    assert torch.equal(labels, torch.from_numpy(ref.target[train]).long())
    original = torch.from_numpy(ref.images[train]).float() / 8.0 - 1.0               # (N, 8, 8)
    back = F.adaptive_avg_pool2d(images[:, :1], 8)[:, 0]                             # area downsample
    corr = torch.corrcoef(torch.stack([back.flatten(), original.flatten()]))[0, 1]
    assert corr > 0.97
    assert (back - original).abs().mean() < 0.2
    held_out = build_dataset(DataConfig(name="digits", resolution=16), channels=1, split="held_out")
    assert len(held_out) == 359 and held_out.channels == 1
    assert torch.equal(held_out.labels, torch.from_numpy(ref.target[~train]).long())


@pytest.mark.parametrize("resolution", [4, 8, 32])
def test_digits_any_resolution(resolution):
    images, labels = build_dataset(DataConfig(name="digits", resolution=resolution), 1).all_images(limit=5)
    assert images.shape == (5, 1, resolution, resolution) and labels.shape == (5,)
    assert images.min() >= -1.0 and images.max() <= 1.0


def test_mnist_is_mlxtends_5k_with_100_per_class_held_out():
    import gzip

    from harness.data import mnist_5k_file
    with gzip.open(mnist_5k_file(), "rt") as fh:
        rows = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    assert rows.shape == (5000, 785)
    cfg = DataConfig(name="mnist", resolution=28)
    train, held_out = build_dataset(cfg, 1), build_dataset(cfg, 1, "held_out")
    assert (len(train), len(held_out), train.num_classes, dataset_num_classes(cfg)) == (4000, 1000, 10, 10)
    assert train.labels.bincount().tolist() == [400] * 10 and held_out.labels.bincount().tolist() == [100] * 10
    first_of_class_1 = int(np.argmax(rows[:, -1] == 1))
    images, labels = held_out.all_images()
    expected = torch.from_numpy(rows[first_of_class_1 - 100:first_of_class_1, :784]).float().view(-1, 28, 28)
    np.testing.assert_allclose(images[:100, 0], expected / 127.5 - 1, atol=1e-6)    # the last 100 zeros, as is
    assert (labels[:100] == 0).all()
    # the stated size rule: 28 -> 32 pads with background around the centre; 28 -> 16 resizes
    ten, ten_labels = held_out.all_images(limit=10)              # evenly spaced: one of each class
    assert torch.equal(ten, images[::100]) and ten_labels.tolist() == list(range(10))
    padded, _ = build_dataset(DataConfig(name="mnist", resolution=32), 1, "held_out").all_images(limit=10)
    assert torch.equal(padded[:, :, 2:30, 2:30], ten) and (padded[:, :, :2] == -1).all()
    small, _ = build_dataset(DataConfig(name="mnist", resolution=16), 1, "held_out").all_images(limit=10)
    assert small.shape == (10, 1, 16, 16)
    assert (F.adaptive_avg_pool2d(ten, 4) - F.adaptive_avg_pool2d(small, 4)).abs().mean() < 0.05


def test_fashion_mnist_from_debian_or_one_line_naming_the_package():
    from harness import data
    cfg = DataConfig(name="fashion_mnist", resolution=28)
    if not Path(data.FASHION_MNIST_DIR).is_dir():
        with pytest.raises(ConfigError, match=r"^data\.name='fashion_mnist': not installed .*dataset-fashion-mnist"):
            validate_data(cfg, 28, 1)
        pytest.skip("Debian's dataset-fashion-mnist is not installed (scripts/install_debian.sh datasets installs it)")
    train, held_out = build_dataset(cfg, 1), build_dataset(cfg, 1, "held_out")
    assert (len(train), len(held_out)) == (60000, 10000)
    assert train.labels.bincount().tolist() == [6000] * 10 and held_out.labels.bincount().tolist() == [1000] * 10
    images, _ = held_out.all_images(limit=100)
    assert images.shape == (100, 1, 28, 28) and images.min() == -1 and images.max() > 0.5


def test_missing_fashion_mnist_fails_in_one_line(monkeypatch, tmp_path):
    from harness import data
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(ConfigError) as err:
        validate_data(DataConfig(name="fashion_mnist", resolution=16), 16, 1)
    assert str(err.value) == ("data.name='fashion_mnist': not installed (" + str(tmp_path / "absent") + " is missing): "
                              "apt-get install dataset-fashion-mnist (scripts/install_debian.sh datasets)")


def test_channels_follow_the_model():
    validate_data(DataConfig(name="mnist", resolution=16), 16, 3)             # grey replicated for an RGB model
    with pytest.raises(ConfigError, match=r"^model\.in_channels=1: data\.name=shapes gives colour images"):
        validate_data(DataConfig(name="shapes", resolution=16), 16, 1)
    with pytest.raises(ConfigError, match=r"^model\.in_channels=4: data\.name=digits gives grey images"):
        validate_data(DataConfig(name="digits", resolution=16), 16, 4)


# ---------------------------------------------------------------------------------------------
# shapes
# ---------------------------------------------------------------------------------------------
def test_shapes_are_deterministic_and_independent_of_the_run_seed():
    cfg = DataConfig(name="shapes", resolution=16, shapes_size=300)
    torch.manual_seed(1)
    a = build_dataset(cfg).all_images()
    torch.manual_seed(2)
    b = build_dataset(cfg).all_images()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    images, labels = a
    assert images.shape == (300, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert torch.bincount(labels, minlength=10).tolist() == [30] * 10   # balanced classes
    assert not torch.equal(labels[:10], torch.arange(10))              # but shuffled
    # anti-aliased edges: some pixels lie strictly between the background and the shape colours
    assert len(images[0, 0].unique()) > 2
    held_out, held_labels = build_dataset(cfg, split="held_out").all_images()     # from the next seed
    assert held_out.shape == (60, 3, 16, 16) and torch.bincount(held_labels, minlength=10).tolist() == [6] * 10
    assert not any(torch.equal(held_out[0], image) for image in images)


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_shapes_are_class_conditional(resolution):
    ds = build_dataset(DataConfig(name="shapes", resolution=resolution, shapes_size=600))
    assert ds.num_classes == 10 and len(ds) == 600
    images, labels = ds.all_images()
    assert images.shape == (600, 3, resolution, resolution)
    feats = fg_spectrum(images)
    train, test = slice(0, 300), slice(300, 600)
    means = torch.stack([feats[train][labels[train] == c].mean(0) for c in range(10)])
    # the class means are clearly apart ...
    gaps = torch.cdist(means, means) + torch.eye(10) * 1e9
    assert gaps.min() > 0.05
    # ... and a nearest-class-mean classifier on held-out images is far above chance (10 %)
    accuracy = (torch.cdist(feats[test], means).argmin(1) == labels[test]).float().mean()
    assert accuracy > 0.8, accuracy
    # raw images differ per class in colour and position, not just one template
    assert (images[labels == 0].std(0)).mean() > 0.2


def test_shapes_have_the_same_content_at_every_resolution():
    lo = build_dataset(DataConfig(name="shapes", resolution=16, shapes_size=100)).all_images()
    hi = build_dataset(DataConfig(name="shapes", resolution=64, shapes_size=100)).all_images()
    assert torch.equal(lo[1], hi[1])
    assert (F.avg_pool2d(hi[0], 4) - lo[0]).abs().mean() < 0.05


# ---------------------------------------------------------------------------------------------
# step batching
# ---------------------------------------------------------------------------------------------
def test_same_seed_and_step_give_the_same_batch_in_fresh_instances(digits16):
    for step in (0, 7, 112, 113, 1000):
        a = StepBatches(digits16, global_batch=16, seed=3).batch(step)
        b = StepBatches(digits16, global_batch=16, seed=3).batch(step)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert a[0].shape == (16, 3, 16, 16) and a[1].shape == (16,)


def test_iterate_from_a_step_yields_exactly_the_batches_of_those_steps():
    ds = small_dataset(50)
    batches = StepBatches(ds, global_batch=8, seed=0)
    assert batches.steps_per_epoch == 6
    it = batches.iterate(start_step=4)                    # crosses the epoch boundary at step 6
    for step in range(4, 15):
        images, labels = next(it)
        ref_images, ref_labels = StepBatches(ds, global_batch=8, seed=0).batch(step)
        assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)


def test_one_epoch_never_repeats_an_index_and_epochs_reshuffle():
    ds = small_dataset(50)
    batches = StepBatches(ds, global_batch=8, seed=5)
    spe = batches.steps_per_epoch
    epoch0 = torch.cat([batches.global_indices(s)[0] for s in range(spe)])
    assert epoch0.numel() == spe * 8 == len(epoch0.unique())
    assert epoch0.min() >= 0 and epoch0.max() < 50
    epoch1 = torch.cat([batches.global_indices(s)[0] for s in range(spe, 2 * spe)])
    assert len(epoch1.unique()) == spe * 8 and not torch.equal(epoch0, epoch1)
    # the labels returned are the labels of those indices
    _, labels = batches.batch(3)
    assert torch.equal(labels, ds.labels[batches.global_indices(3)[0]])


def test_different_seeds_give_different_orders():
    ds = small_dataset(50)
    a = StepBatches(ds, global_batch=8, seed=0).global_indices(0)[0]
    b = StepBatches(ds, global_batch=8, seed=1).global_indices(0)[0]
    assert not torch.equal(a, b)


def test_ranks_take_disjoint_slices_of_the_global_batch():
    ds = small_dataset(50)
    ranks = [StepBatches(ds, global_batch=12, seed=2, rank=r, world_size=3) for r in range(3)]
    full = StepBatches(ds, global_batch=12, seed=2)
    for step in (0, 1, 5):
        indices, flips = full.global_indices(step)
        parts = [r.local_indices(step) for r in ranks]
        assert all(p[0].numel() == 4 for p in parts)
        assert torch.equal(torch.cat([p[0] for p in parts]), indices)
        assert torch.equal(torch.cat([p[1] for p in parts]), flips)
        assert len(torch.cat([p[0] for p in parts]).unique()) == 12
        images = torch.cat([r.batch(step)[0] for r in ranks])
        assert torch.equal(images, full.batch(step)[0])
    with pytest.raises(ConfigError, match=r"^train\.global_batch"):
        StepBatches(ds, global_batch=10, seed=0, world_size=3)
    with pytest.raises(ConfigError, match=r"^train\.global_batch"):
        StepBatches(ds, global_batch=64, seed=0)             # larger than the dataset


def test_flips_follow_the_flip_coins_and_hflip_off_never_flips():
    ds = small_dataset(50)
    batches = StepBatches(ds, global_batch=48, seed=0)
    indices, flips = batches.global_indices(0)
    assert 0 < int(flips.sum()) < 48
    images, _ = batches.batch(0)
    originals = ds.images[indices]
    assert torch.equal(images[flips], originals[flips].flip(-1))
    assert torch.equal(images[~flips], originals[~flips])
    assert torch.equal(images[flips][:, :, :, -1], torch.ones_like(images[flips][:, :, :, -1]))
    # direct get() with explicit flips
    got, _ = ds.get(torch.tensor([3, 3]), torch.tensor([False, True]))
    assert torch.equal(got[1], got[0].flip(-1))
    off = StepBatches(ds, global_batch=48, seed=0, hflip=False)
    for step in range(3):
        idx, fl = off.global_indices(step)
        assert not fl.any()
        assert torch.equal(off.batch(step)[0], ds.images[idx])
    # the order does not depend on hflip
    assert torch.equal(off.global_indices(0)[0], indices)


# ---------------------------------------------------------------------------------------------
# imagefolder
# ---------------------------------------------------------------------------------------------
GREEN, BLUE, RED = (0, 255, 0), (0, 0, 255), (255, 0, 0)


def pattern(width: int, height: int) -> Image.Image:
    """Red margins around a central square whose left half is green and right half blue."""
    side = min(width, height)
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:] = RED
    x0, y0 = (width - side) // 2, (height - side) // 2
    arr[y0:y0 + side, x0:x0 + side // 2] = GREEN
    arr[y0:y0 + side, x0 + side // 2:x0 + side] = BLUE
    return Image.fromarray(arr)


@pytest.fixture
def folder(tmp_path):
    """Classes created out of order; PNG, JPEG and grey images of non-square sizes; a stray text file."""
    root = tmp_path / "imagenet"
    sizes = {"n03": [(96, 32), (32, 96)], "n01": [(37, 23), (300, 200), (64, 48)], "n02": [(40, 80)]}
    for name, shapes in sizes.items():
        (root / name).mkdir(parents=True)
        for k, (w, h) in enumerate(shapes):
            pattern(w, h).save(root / name / f"img{k}.png")
    Image.fromarray(np.full((50, 70), 128, np.uint8)).save(root / "n02" / "grey.jpeg")
    (root / "n02" / "notes.txt").write_text("not an image")
    return root


def test_center_crop_arr_is_adm():
    # 96x32 at R=16: BOX-halved to 48x16, no resize, centre crop = exactly the central square
    arr = center_crop_arr(pattern(96, 32), 16)
    assert arr.shape == (16, 16, 3)
    assert (arr[:, :8] == GREEN).all() and (arr[:, 8:] == BLUE).all()
    for w, h in [(37, 23), (300, 200), (23, 37), (16, 16), (17, 101)]:
        assert center_crop_arr(pattern(w, h), 16).shape == (16, 16, 3)


def test_imagefolder_labels_crop_and_pattern(folder):
    cfg = DataConfig(name="imagefolder", path=str(folder), resolution=16, num_workers=0)
    validate_data(cfg, 16, 3)
    assert dataset_num_classes(cfg) == 3
    ds = build_dataset(cfg)
    assert ds.classes == ["n01", "n02", "n03"] and ds.num_classes == 3 and len(ds) == 7
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 2, 2]          # sorted folder names, txt ignored
    images, labels = ds.all_images()
    assert images.shape == (7, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert torch.equal(labels, ds.labels)
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1)
    blue = torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1)
    wide = ds.files.index(str(folder / "n03" / "img0.png"))      # 96x32: exact halving, exact crop
    tall = ds.files.index(str(folder / "n03" / "img1.png"))
    for i in (wide, tall):
        assert torch.equal(images[i, :, :, :8], green.expand(3, 16, 8))
        assert torch.equal(images[i, :, :, 8:], blue.expand(3, 16, 8))
    # the resampled ones keep the pattern away from the edges of the halves
    for i in range(7):
        if ds.files[i].endswith(".png"):
            assert (images[i, :, 2:-2, 2:5] - green).abs().max() < 0.1
            assert (images[i, :, 2:-2, 11:14] - blue).abs().max() < 0.1
    grey = ds.files.index(str(folder / "n02" / "grey.jpeg"))
    assert (images[grey] - (128 / 127.5 - 1)).abs().max() < 0.02
    flipped, _ = ds.get(torch.tensor([wide]), torch.tensor([True]))
    assert torch.equal(flipped[0], images[wide].flip(-1))


def test_imagefolder_dataloader_workers_equal_direct_batches(folder):
    ds = build_dataset(DataConfig(name="imagefolder", path=str(folder), resolution=16, num_workers=2))
    loaded = StepBatches(ds, global_batch=2, seed=4, num_workers=2)
    direct = StepBatches(ds, global_batch=2, seed=4, num_workers=0)
    assert loaded.steps_per_epoch == 3
    it = loaded.iterate(start_step=2)
    for step in range(2, 9):
        images, labels = next(it)
        ref_images, ref_labels = direct.batch(step)
        assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    it.close()
    images, labels = ds.all_images(limit=5)                      # loaded by the workers too
    ref = build_dataset(DataConfig(name="imagefolder", path=str(folder), resolution=16, num_workers=0))
    ref_images, ref_labels = ref.all_images(limit=5)
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)


def test_imagefolder_batches_are_the_same_whatever_the_number_of_ranks(folder):
    """A step's global batch is a function of (seed, step) only: 1, 2 or 4 ranks (one node or several: only
    the global rank counts), each loading its slice through its own DataLoader workers, see the same images."""
    ds = build_dataset(DataConfig(name="imagefolder", path=str(folder), resolution=16, num_workers=2))
    one = StepBatches(ds, global_batch=4, seed=7, num_workers=0)
    for world in (2, 4):
        loaders = [StepBatches(ds, global_batch=4, seed=7, rank=r, world_size=world, num_workers=2).iterate(3)
                   for r in range(world)]
        for step in range(3, 7):                                  # several epochs (one step per epoch here)
            parts = [next(loader) for loader in loaders]
            images, labels = one.batch(step)
            assert torch.equal(torch.cat([p[0] for p in parts]), images)
            assert torch.equal(torch.cat([p[1] for p in parts]), labels)
        for loader in loaders:
            loader.close()


def test_a_packed_folder_gives_exactly_the_batches_of_its_image_folder(folder, tmp_path, capsys):
    from harness.packed import main as packed_main
    packed = tmp_path / "packed16"
    assert packed_main(["prepare", str(folder), str(packed), "--resolution", "16", "--workers", "2"]) == 0
    assert f"packed 7 images at 16 px into {packed}" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.partial"))                  # built beside, renamed into place
    cfg = DataConfig(name="imagefolder", path=str(packed), resolution=16, num_workers=2)
    validate_data(cfg, 16, 3)
    assert dataset_num_classes(cfg) == 3
    fast = build_dataset(cfg)
    slow = build_dataset(DataConfig(name="imagefolder", path=str(folder), resolution=16, num_workers=0))
    assert fast.classes == slow.classes and torch.equal(fast.labels, slow.labels)
    for world in (1, 2):
        for rank in range(world):
            a = StepBatches(fast, global_batch=6, seed=3, rank=rank, world_size=world)
            b = StepBatches(slow, global_batch=6, seed=3, rank=rank, world_size=world)
            for step in range(4):
                (x, y), (ref_x, ref_y) = a.batch(step), b.batch(step)
                assert torch.equal(x, ref_x) and torch.equal(y, ref_y)     # the same floats, flips included
    loader = StepBatches(fast, global_batch=6, seed=3, num_workers=2).iterate(1)   # prefetched by workers
    for step in range(1, 4):
        x, y = next(loader)
        assert torch.equal(x, slow.get(*StepBatches(slow, 6, 3).global_indices(step))[0])
    loader.close()
    with pytest.raises(ConfigError, match=r"^data\.resolution=32: .* is packed at 16 px"):
        validate_data(DataConfig(name="imagefolder", path=str(packed), resolution=32), 32, 3)
    assert packed_main(["prepare", str(folder), str(packed), "--resolution", "16"]) == 2
    assert capsys.readouterr().err.startswith(f"error: dest='{packed}': exists")


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, key", [
    (dict(name="foo"), "data.name='foo': unknown value"),
    (dict(name="imagefolder"), "data.path: required"),
    (dict(name="imagefolder", path="/nonexistent/imagenet"), "data.path='/nonexistent/imagenet': does not exist"),
    (dict(resolution=16), "data.resolution=16: must equal the model's image size 32"),
    (dict(name="shapes", shapes_size=0), "data.shapes_size=0"),
    (dict(num_workers=-1), "data.num_workers=-1"),
])
def test_validate_data_names_the_key(changes, key):
    with pytest.raises(ConfigError) as err:
        validate_data(DataConfig(**changes), 32, 3)
    message = str(err.value)
    assert message.startswith(key) and "\n" not in message


def test_validate_data_rejects_a_folder_without_images(tmp_path):
    (tmp_path / "class_a").mkdir()
    (tmp_path / "class_a" / "readme.txt").write_text("x")
    cfg = DataConfig(name="imagefolder", path=str(tmp_path), resolution=16)
    with pytest.raises(ConfigError, match=r"^data\.path=.*no images \(class folders of images, or images"):
        validate_data(cfg, 16, 3)
    with pytest.raises(ConfigError, match=r"^data\.path"):
        build_dataset(cfg)
    with pytest.raises(ConfigError, match=r"^data\.name"):
        build_dataset(DataConfig(name="cifar"))
    validate_data(DataConfig(name="shapes", resolution=64), 64, 3)
    assert dataset_num_classes(DataConfig(name="digits")) == 10
    assert dataset_num_classes(DataConfig(name="shapes")) == 10


def test_a_flat_folder_of_images_is_one_class(tmp_path):
    """FFHQ-style data for unconditional models: images directly in data.path, no class folders."""
    from PIL import Image
    for i in range(3):
        Image.new("RGB", (20, 24), (40 * i, 0, 0)).save(tmp_path / f"{i:05d}.png")
    cfg = DataConfig(name="imagefolder", path=str(tmp_path), resolution=16)
    validate_data(cfg, 16, 3)
    dataset = build_dataset(cfg)
    assert dataset.num_classes == 1 and dataset_num_classes(cfg) == 1 and len(dataset) == 3
    images, labels = dataset.all_images()
    assert images.shape == (3, 3, 16, 16) and labels.tolist() == [0, 0, 0]
    assert images[2, 0].mean() > images[1, 0].mean() > images[0, 0].mean()
