"""CIFAR-10 from a user's directory: the JPEG ImageFolder copy (real images from ../shared) and
torchvision's files (a synthetic fixture), the decode cache, and one-line errors for bad trees."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gpt_params.errors import DataError
from gpt_params.tasks import data as d
from gpt_params.tasks import get_task

from .conftest import cifar_jpegs

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT_PARAMS_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def jpeg_tree(tmp_path) -> Path:
    """10 train and 5 test images per class, extracted from the real archive."""
    return cifar_jpegs(tmp_path / "cifar-jpeg", "000?.jpg", "000[0-4].jpg")


def test_image_folder_loads_real_jpegs_with_cifar_splits_and_labels(jpeg_tree):
    x_train, y_train, x_test, y_test = d.cifar10_image_folder(jpeg_tree)
    assert x_train.shape == (100, 32, 32, 3) and x_train.dtype == np.uint8
    assert x_test.shape == (50, 32, 32, 3)
    assert np.bincount(y_train).tolist() == [10] * 10 and np.bincount(y_test).tolist() == [5] * 10
    # label k is the k-th class folder in sorted order; the cat images are class 3, pixel for pixel
    cat = np.asarray(Image.open(jpeg_tree / "train" / "cat" / "0004.jpg"))
    assert y_train[34] == CLASSES.index("cat") and np.array_equal(x_train[34], cat)

    task = get_task("cifar10-cnn", data_dir=str(jpeg_tree))
    assert task.data.sizes() == {"train": 90, "val": 10, "test": 50}
    x = task.data.x["train"]
    assert x.shape[1:] == (3, 32, 32) and abs(x.mean().item()) < 0.5 and 0.5 < x.std().item() < 1.5
    m = task.evaluate(task.unseen_inits(2))
    assert all(np.isfinite(v).all() for v in m.values())


def test_decoded_images_are_cached_and_a_changed_tree_is_decoded_again(jpeg_tree, tmp_path, monkeypatch):
    first = d.cifar10_image_folder(jpeg_tree)
    cached = list((tmp_path / "cache").glob("cifar10-images-*.npz"))
    assert len(cached) == 1

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(d, "_decode_images", no_decoding)
    again = d.cifar10_image_folder(jpeg_tree)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))

    Image.new("RGB", (32, 32), (255, 0, 0)).save(jpeg_tree / "train" / "cat" / "0004.jpg")
    with pytest.raises(AssertionError, match="decoded again"):
        d.cifar10_image_folder(jpeg_tree)


def make_tree(root: Path, train=("cat", "dog"), test=("cat", "dog"), n=2) -> Path:
    for split, classes in (("train", train), ("test", test)):
        (root / split).mkdir(parents=True)
        for c in classes:
            (root / split / c).mkdir()
            for i in range(n):
                Image.new("RGB", (32, 32), (i, 0, 0)).save(root / split / c / f"{i}.png")
    return root


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda r: make_tree(r, train=()), r"train' has no class folders"),
        (lambda r: make_tree(r, test=("cat",)), r"missing from test/: \['dog'\]"),
        (lambda r: make_tree(r, n=0), r"class folder '.*train/cat' is empty"),
        (
            lambda r: Image.new("RGB", (28, 28)).save(make_tree(r) / "test" / "dog" / "0.png"),
            r"image '.*test/dog/0.png' is RGB 28x28; expected RGB 32x32",
        ),
        (
            lambda r: Image.new("L", (32, 32)).save(make_tree(r) / "train" / "cat" / "1.png"),
            r"image '.*train/cat/1.png' is L 32x32",
        ),
        (
            lambda r: (make_tree(r) / "train" / "cat" / "1.png").write_bytes(b"not an image"),
            r"cannot decode image '.*train/cat/1.png'",
        ),
    ],
)
def test_bad_image_trees_are_one_line_errors_naming_the_path(tmp_path, breakage, message):
    root = tmp_path / "tree"
    breakage(root)
    with pytest.raises(DataError, match=message) as e:
        _ = get_task("cifar10-cnn", data_dir=str(root)).data
    assert "\n" not in str(e.value)


def test_a_directory_with_neither_layout_names_both(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*ImageFolder tree"):
        _ = get_task("cifar10-cnn", data_dir=str(tmp_path)).data


def test_torchvision_files_load_with_the_same_splits(tmp_path, monkeypatch):
    """A synthetic fixture in torchvision's pickled-batch layout; torchvision checks the official md5s,
    which the fixture's files replace here."""
    import hashlib

    from torchvision.datasets import CIFAR10

    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    sums = {}
    for name, n in [*((f"data_batch_{i}", 40) for i in range(1, 6)), ("test_batch", 30)]:
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
        }
        (base / name).write_bytes(pickle.dumps(batch))
        sums[name] = hashlib.md5((base / name).read_bytes()).hexdigest()
    meta = {"label_names": list(CLASSES)}
    (base / "batches.meta").write_bytes(pickle.dumps(meta))
    monkeypatch.setattr(
        CIFAR10, "train_list", [[f"data_batch_{i}", sums[f"data_batch_{i}"]] for i in range(1, 6)]
    )
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", sums["test_batch"]]])
    monkeypatch.setattr(CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": None})

    task = get_task("cifar10-cnn", data_dir=str(tmp_path))
    assert task.data.sizes() == {"train": 180, "val": 20, "test": 30}
    # torchvision's CHW rows become (3, 32, 32) images normalised with CIFAR-10's statistics
    first = pickle.loads((base / "test_batch").read_bytes())["data"][0].reshape(3, 32, 32)
    mean, std = torch.tensor(d.CIFAR_MEAN)[:, None, None], torch.tensor(d.CIFAR_STD)[:, None, None]
    torch.testing.assert_close(task.data.x["test"][0], (torch.from_numpy(first).float() / 255 - mean) / std)


def test_flip_crop_gives_each_image_a_flip_and_a_shift_of_its_padding():
    from gpt_params.tasks.supervised import flip_crop

    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = flip_crop(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    found = set()
    for i in range(64):
        matches = [
            (flip, dy, dx)
            for flip in (False, True)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(
                torch.nn.functional.pad(x[i].flip(-1) if flip else x[i], (4, 4, 4, 4))[
                    :, dy : dy + 32, dx : dx + 32
                ],
                out[i],
            )
        ]
        assert len(matches) == 1, f"image {i}: {matches}"
        found.add(matches[0])
    assert (
        len({f for f, _, _ in found}) == 2 and len({dy for _, dy, _ in found}) > 4
    )  # both flips, many shifts


def test_augmented_harvest_only_where_the_task_defines_augmentation(tmp_path):
    from gpt_params.errors import GptParamsError
    from gpt_params.harvest import HarvestConfig, harvest

    rng = np.random.default_rng(0)
    data = d.cifar10_from_arrays(
        rng.integers(0, 256, (300, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, 300),
        rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, 20),
    )
    kw = dict(runs=2, ckpts_per_run=3, cohort_size=2, epochs=1, preset="gpt")
    plain = harvest(
        HarvestConfig(task="cifar10-cnn", out=str(tmp_path / "a.h5"), **kw),
        get_task("cifar10-cnn", data=data),
    )
    augmented = harvest(
        HarvestConfig(task="cifar10-cnn", out=str(tmp_path / "b.h5"), augment=True, **kw),
        get_task("cifar10-cnn", data=data),
    )
    from gpt_params.zoo_reader import Zoo

    a, b = Zoo(plain.path), Zoo(augmented.path)
    assert np.array_equal(a.params(0)[0], b.params(0)[0])  # same inits
    assert not np.allclose(a.params(0)[-1], b.params(0)[-1])  # trained on other images
    with pytest.raises(GptParamsError, match="--augment: mnist-cnn defines no augmentation"):
        harvest(HarvestConfig(task="mnist-cnn", out=str(tmp_path / "c.h5"), augment=True, **kw))
    assert not (tmp_path / "c.h5").exists()
