"""CIFAR-10 as uint8 tensors, read straight from the standard "python version" layout.

The batch files are read with pickle and checked for shape, dtype, label range and count
instead of md5, so that re-encoded copies (such as the test subset) load too. Augmentation
(random crop with 4-pixel zero padding, horizontal flip) runs as batched tensor ops on
whatever device the images live on. A node's own folder (fl.client-data=local) holds its
training images as batch files or one .npz; load_own_images reads it with the same checks.
"""

from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
NUM_CLASSES = 10
HOW_TO_GET = (
    "Download the CIFAR-10 python version from https://www.cs.toronto.edu/~kriz/cifar.html "
    "and unpack it so that <data.dir>/cifar-10-batches-py/data_batch_1 exists, or set "
    "data.download=true to let torchvision fetch it (needs internet)."
)


class DataError(ValueError):
    """The data directory is missing, incomplete or corrupt."""


@dataclass(frozen=True)
class Cifar10:
    """CIFAR-10 held as uint8 images (N, 3, 32, 32) and int64 labels (N,), on the CPU."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def _read_batch(path: Path, hint: str = HOW_TO_GET) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"CIFAR-10 batch file missing: {path}. {hint}")
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except Exception as exc:  # truncated or not a pickle at all
        raise DataError(
            f"CIFAR-10 batch file {path} is corrupt or truncated ({type(exc).__name__}: "
            f"{exc}). Replace it with a fresh copy. {hint}"
        ) from None
    if not isinstance(entry, dict) or "data" not in entry:
        raise DataError(f"{path} is not a CIFAR-10 batch (no 'data' entry). {hint}")
    labels = entry.get("labels", entry.get("fine_labels"))
    data = np.asarray(entry["data"])
    if labels is None:
        raise DataError(f"{path} has no 'labels' entry; is it a CIFAR-10 batch? {hint}")
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: images must be uint8 of shape (N, 3072), found {data.dtype} "
            f"{tuple(data.shape)}. {hint}"
        )
    if labels.shape != (data.shape[0],):
        raise DataError(
            f"{path}: {data.shape[0]} images but {labels.shape[0]} labels. {hint}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(
            f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, found "
            f"{int(labels.min())}..{int(labels.max())}. {hint}"
        )
    if data.shape[0] == 0:
        raise DataError(f"{path} holds no images. {hint}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_split(folder: Path, files: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [_read_batch(folder / name) for name in files]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(x), torch.from_numpy(y)


def _download(root: Path) -> None:
    """Fetch the official archive with torchvision (needs internet)."""
    import torchvision  # imported here: only the download path needs it

    try:
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    except Exception as exc:
        raise DataError(
            f"downloading CIFAR-10 into {root} failed ({type(exc).__name__}: {exc}). "
            f"Are you offline? {HOW_TO_GET}"
        ) from None


def resolve_root(data_dir: str | os.PathLike | None) -> Path:
    """The folder that holds (or will hold) cifar-10-batches-py/.

    A path that itself ends in cifar-10-batches-py is accepted too.
    """
    if not data_dir:
        return Path.home() / ".cache" / "robustfl" / "data"
    root = Path(data_dir).expanduser()
    if root.name == BATCH_DIR:
        root = root.parent
    return root


def load_cifar10(data_dir: str | os.PathLike | None, download: bool = False) -> Cifar10:
    """Load CIFAR-10 from `data_dir` (cached per process), downloading first if asked."""
    root = resolve_root(data_dir).resolve()
    folder = root / BATCH_DIR
    if not folder.is_dir():
        if download:
            _download(root)
        elif not root.exists():
            raise DataError(f"data directory {root} does not exist. {HOW_TO_GET}")
        else:
            raise DataError(f"no {BATCH_DIR}/ folder in data directory {root}. {HOW_TO_GET}")
    stamp = tuple(
        (folder / name).stat().st_mtime_ns if (folder / name).exists() else 0
        for name in (*TRAIN_FILES, TEST_FILE)
    )
    return _load_cached(str(folder), stamp)


@functools.lru_cache(maxsize=2)
def _load_cached(folder: str, _stamp: tuple[int, ...]) -> Cifar10:
    # _stamp (file mtimes) is part of the key so that a replaced file is read again.
    train_x, train_y = _read_split(Path(folder), TRAIN_FILES)
    test_x, test_y = _read_split(Path(folder), (TEST_FILE,))
    return Cifar10(train_x, train_y, test_x, test_y)


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float().div_(255.0)


def augment(x_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (zero padding 4) and horizontal flip of a uint8 batch, returned as float [0,1].

    Batched: one padded copy and one gather for the whole batch, on the batch's device.
    """
    b, c, h, w = x_uint8.shape
    device = x_uint8.device
    padded = torch.nn.functional.pad(x_uint8, (4, 4, 4, 4))
    shifts = torch.randint(0, 9, (2, b), device=device, generator=generator)
    rows = (torch.arange(h, device=device)[None, :] + shifts[0][:, None])[:, None, :, None]
    cols = (torch.arange(w, device=device)[None, :] + shifts[1][:, None])[:, None, None, :]
    flip = torch.rand(b, device=device, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(b, device=device)[:, None, None, None]
    chan = torch.arange(c, device=device)[None, :, None, None]
    return to_float(padded[batch, chan, rows, cols])


# --- one party's own training images (fl.client-data=local) --------------------------------

OWN_LAYOUT = (
    "A node's data-dir holds only its own training images: in the CIFAR-10 python layout "
    f"(<data-dir>/{BATCH_DIR}/data_batch_*) or as one .npz file with x (uint8, N x 32 x 32 x 3) "
    "and y (integer labels 0..9). `python -m deploy.split` writes such folders (docs/deploy.md)."
)
IMAGE_SHAPE = (32, 32, 3)  # one .npz image: height, width, channel (CIFAR-10's numpy layout)


def own_image_files(data_dir: str | os.PathLike) -> list[Path]:
    """The files that hold a party's own training images: every data_batch_* of the CIFAR-10
    layout, or the one .npz. Refuses a folder with neither, both, or several .npz files."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data-dir {root} does not exist or is not a folder. {OWN_LAYOUT}")
    folder = root if root.name == BATCH_DIR else root / BATCH_DIR
    batches = sorted(folder.glob("data_batch*")) if folder.is_dir() else []
    archives = sorted(root.glob("*.npz"))
    if batches and archives:
        raise DataError(f"data-dir {root} holds both {folder.name}/ batch files and "
                        f"{archives[0].name}; keep one of the two layouts. {OWN_LAYOUT}")
    if len(archives) > 1:
        raise DataError(f"data-dir {root} holds {len(archives)} .npz files "
                        f"({', '.join(a.name for a in archives)}); keep one. {OWN_LAYOUT}")
    if not batches and not archives:
        raise DataError(f"data-dir {root} holds no training images (no {BATCH_DIR}/data_batch_* "
                        f"file and no .npz file). {OWN_LAYOUT}")
    return batches or archives


def load_own_images(data_dir: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """All training images of a party's own folder (see own_image_files) as uint8 (N, 3, 32,
    32) and int64 labels, checked like CIFAR-10's batches; cached per process."""
    files = own_image_files(data_dir)
    return _own_cached(tuple(str(f) for f in files), tuple(f.stat().st_mtime_ns for f in files))


@functools.lru_cache(maxsize=2)
def _own_cached(files: tuple[str, ...], _stamp: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    parts = [_read_npz(Path(f)) if f.endswith(".npz") else _read_batch(Path(f), OWN_LAYOUT)
             for f in files]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(x), torch.from_numpy(y)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as exc:  # truncated, not a zip, or pickled objects
        raise DataError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                        f"replace it with a fresh copy. {OWN_LAYOUT}") from None
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path} holds arrays {sorted(arrays)}, not x and y. {OWN_LAYOUT}")
    x, y = arrays["x"], arrays["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        hint = (" (channels first? store N x 32 x 32 x 3)"
                if x.ndim == 4 and x.shape[1:] == (3, 32, 32) else "")
        raise DataError(f"{path}: x must be uint8 of shape (N, 32, 32, 3), found {x.dtype} "
                        f"{tuple(x.shape)}{hint}. {OWN_LAYOUT}")
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (x.shape[0],):
        raise DataError(f"{path}: y must hold one integer label per image, found {y.dtype} "
                        f"{tuple(y.shape)} for {x.shape[0]} images. {OWN_LAYOUT}")
    if x.shape[0] == 0:
        raise DataError(f"{path} holds no images. {OWN_LAYOUT}")
    if y.min() < 0 or y.max() >= NUM_CLASSES:
        raise DataError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}, found "
                        f"{int(y.min())}..{int(y.max())}. {OWN_LAYOUT}")
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y.astype(np.int64)


def write_batch(path: Path, x: np.ndarray, y: np.ndarray, label: str = "") -> None:
    """A CIFAR-10 python batch file of uint8 images (N, 3, 32, 32) and labels, as
    _read_batch reads it."""
    entry = {"batch_label": label, "labels": [int(v) for v in y],
             "data": np.ascontiguousarray(x, dtype=np.uint8).reshape(len(x), -1)}
    with path.open("wb") as f:
        pickle.dump(entry, f, protocol=pickle.HIGHEST_PROTOCOL)


def write_npz(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """One .npz of uint8 images (N, 3, 32, 32) and labels, as _read_npz reads it."""
    np.savez(path, x=np.ascontiguousarray(np.asarray(x, dtype=np.uint8).transpose(0, 2, 3, 1)),
             y=np.asarray(y, dtype=np.int64))
