import pickle
import shutil

import numpy as np
import pytest
import torch

from common.data import DataError, augment, load_cifar10


def test_real_subset_loads_as_uint8_with_checked_shapes(cifar):
    assert cifar.train_x.shape == (5000, 3, 32, 32) and cifar.train_x.dtype == torch.uint8
    assert cifar.test_x.shape == (1000, 3, 32, 32)
    assert cifar.train_y.dtype == torch.int64
    assert torch.bincount(cifar.train_y).tolist() == [500] * 10


def test_accepts_the_batch_folder_itself(data_dir):
    assert load_cifar10(data_dir / "cifar-10-batches-py").train_x.shape[0] == 5000


@pytest.fixture
def data_copy(data_dir, tmp_path):
    target = tmp_path / "cifar-10-batches-py"
    shutil.copytree(data_dir / "cifar-10-batches-py", target)
    for f in target.iterdir():
        f.chmod(0o644)
    return tmp_path


def _rewrite(path, **changes):
    with path.open("rb") as f:
        entry = pickle.load(f, encoding="latin1")
    entry.update(changes)
    with path.open("wb") as f:
        pickle.dump(entry, f, protocol=2)


def test_missing_directory_says_how_to_get_the_data(tmp_path):
    with pytest.raises(DataError, match="does not exist.*cs.toronto.edu.*data.download"):
        load_cifar10(tmp_path / "nowhere")


def test_empty_directory(tmp_path):
    with pytest.raises(DataError, match="no cifar-10-batches-py"):
        load_cifar10(tmp_path)


def test_missing_batch_file_is_named(data_copy):
    (data_copy / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(data_copy)


def test_truncated_batch_file_is_named(data_copy):
    path = data_copy / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="data_batch_2 is corrupt or truncated"):
        load_cifar10(data_copy)


def test_wrong_image_shape_is_named(data_copy):
    path = data_copy / "cifar-10-batches-py" / "test_batch"
    _rewrite(path, data=np.zeros((10, 100), dtype=np.uint8), labels=[0] * 10)
    with pytest.raises(DataError, match="test_batch.*shape"):
        load_cifar10(data_copy)


def test_labels_out_of_range_are_named(data_copy):
    path = data_copy / "cifar-10-batches-py" / "data_batch_1"
    with path.open("rb") as f:
        n = len(pickle.load(f, encoding="latin1")["labels"])
    _rewrite(path, labels=[12] * n)
    with pytest.raises(DataError, match="data_batch_1: labels must lie in 0..9"):
        load_cifar10(data_copy)


def test_augment_is_a_crop_and_flip_of_the_original(cifar):
    x = cifar.train_x[:64]
    gen = torch.Generator().manual_seed(0)
    out = augment(x, gen)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4)).float() / 255
    flips = 0
    for i in range(x.shape[0]):
        windows = [padded[i, :, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        plain = any(torch.equal(out[i], w) for w in windows)
        flipped = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or flipped
        flips += flipped and not plain
    assert 10 < flips < 54  # about half are flipped


def test_augment_draws_every_shift_and_follows_the_generator(cifar):
    x = cifar.train_x[:128]
    out = augment(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(out, augment(x, torch.Generator().manual_seed(1)))
    as_uint8 = (out * 255).round().to(torch.uint8)
    windows = torch.nn.functional.pad(x, (4, 4, 4, 4)).unfold(2, 32, 1).unfold(3, 32, 1)
    windows = windows.permute(0, 2, 3, 1, 4, 5)  # (image, row, col, 3, 32, 32)
    rows, cols = set(), set()
    for i in range(x.shape[0]):
        plain = (windows[i] == as_uint8[i]).flatten(2).all(2)
        flipped = (windows[i].flip(-1) == as_uint8[i]).flatten(2).all(2)
        found = (plain | flipped).nonzero().tolist()
        if len(found) == 1:  # a flat image region can match several shifts
            rows.add(found[0][0])
            cols.add(found[0][1])
    # Each of the 9 offsets per axis misses all 128 images with chance (8/9)^128 < 1e-6.
    assert rows == set(range(9)) and cols == set(range(9))
