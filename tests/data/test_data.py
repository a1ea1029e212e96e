"""Data loaders: generated sets, the real torchvision loaders on small files made here, and
user files (.npy/.npz/.csv/image folder) with their error messages."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyro_vae import DataError, load_dataset
from pyro_vae.data.datasets import load_celeba, load_file, load_torchvision_mnist
from pyro_vae.errors import ConfigError
from tests.common import make_celeba_files


def test_generated_sets_have_the_documented_shapes_and_fixed_splits():
    d = load_dataset("digits")
    assert d.x_train.shape == (1438, 1, 8, 8) and d.x_test.shape == (359, 1, 8, 8)
    assert float(d.x_train.min()) >= 0 and float(d.x_train.max()) <= 1
    assert torch.equal(d.x_test, load_dataset("digits").x_test)  # fixed by split_seed
    assert not torch.equal(d.x_test, load_dataset("digits", split_seed=1).x_test)
    m = load_dataset("moons")
    x = torch.cat([m.x_train, m.x_test])
    assert x.shape == (2500, 2)
    torch.testing.assert_close(x.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    c = load_dataset("circle")
    assert c.x_train.shape == (15000, 2) and c.x_test.shape == (5000, 2)
    radius = torch.cat([c.x_train, c.x_test]).norm(dim=1)
    assert abs(float(radius.mean()) - 1.0) < 0.02


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """IDX format: magic (0, 0, dtype=0x08 ubyte, ndim), big-endian dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(data)


def make_mnist_files(root: Path, folder: str, n_train=20, n_test=10, gz=False) -> None:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)),
                  gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, n), gz)


@pytest.mark.parametrize("name,folder", [("fashion-mnist", "FashionMNIST"), ("mnist", "MNIST")])
def test_torchvision_mnist_loaders_read_idx_files(tmp_path, name, folder):
    make_mnist_files(tmp_path, folder)
    d = load_torchvision_mnist(name, tmp_path)
    assert d.x_train.shape == (20, 1, 28, 28) and d.x_test.shape == (10, 1, 28, 28)
    assert d.x_train.dtype == torch.float32 and float(d.x_train.max()) <= 1.0
    assert d.y_train.dtype == torch.int64 and d.num_classes == 10


@pytest.mark.parametrize("found", [True, False])
def test_digits_are_scikit_learns_read_with_or_without_importing_it(found, monkeypatch):
    """The digits file read directly gives scikit-learn's images and labels; where the file is
    not found, scikit-learn's loader is used."""
    import importlib.util

    from sklearn.datasets import load_digits as sk_digits

    if not found:
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "sklearn" else real(name, *a))
    data = load_dataset("digits", split_seed=3)
    assert data.x_train.dtype == torch.float32 and data.x_train.shape[1:] == (1, 8, 8)
    x = torch.cat([data.x_train, data.x_test]).reshape(-1, 64).numpy() * 16
    y = torch.cat([data.y_train, data.y_test]).numpy()
    bunch = sk_digits()

    def rows(pixels, labels):  # the split shuffles: compare as sorted rows
        return sorted(map(tuple, np.concatenate([pixels, labels[:, None]], 1).tolist()))

    assert rows(x, y) == rows(bunch.data, bunch.target)


def test_fashion_mnist_is_unpacked_from_debian_gzip_files(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    make_mnist_files(debian, "x", gz=True)
    monkeypatch.setattr("pyro_vae.data.datasets.DEBIAN_FASHION_MNIST", debian / "x" / "raw")
    d = load_torchvision_mnist("fashion-mnist", tmp_path / "cache")
    assert d.x_train.shape == (20, 1, 28, 28)
    assert (tmp_path / "cache" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_missing_mnist_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr("pyro_vae.data.datasets.DEBIAN_FASHION_MNIST", tmp_path / "none")
    with pytest.raises(DataError, match="--data-root"):
        load_torchvision_mnist("mnist", tmp_path)
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_torchvision_mnist("fashion-mnist", tmp_path)


def test_truncated_idx_file_is_reported(tmp_path):
    make_mnist_files(tmp_path, "MNIST")
    f = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:500])
    with pytest.raises(DataError, match="cannot be read"):
        load_torchvision_mnist("mnist", tmp_path)


def test_celeba_loader_reads_local_files_through_torchvision(tmp_path, monkeypatch):
    import torchvision

    make_celeba_files(tmp_path)
    # the real files' MD5 sums cannot match files made here; everything else is torchvision's
    monkeypatch.setattr(torchvision.datasets.CelebA, "_check_integrity", lambda self: True)
    d = load_celeba(tmp_path, image_size=64)
    assert d.x_train.shape == (3, 3, 64, 64) and d.x_test.shape == (2, 3, 64, 64)
    assert d.kind == "image" and d.y_train is None


def test_celeba_missing_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="img_align_celeba"):
        load_celeba(tmp_path)


def test_user_arrays_npy_npz_csv(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    y = np.arange(50) % 2
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", x=x, y=y)
    np.savetxt(tmp_path / "c.csv", np.column_stack([x, y]), delimiter=",",
               header="a,b,c,label", comments="")
    a = load_file(tmp_path / "a.npy")
    assert a.x_train.shape == (40, 3) and a.y_train is None and a.kind == "vector"
    b = load_file(tmp_path / "b.npz")
    assert b.num_classes == 2 and b.y_test.shape == (10,)
    c = load_file(tmp_path / "c.csv", label_column="label")
    assert c.x_train.shape == (40, 3) and c.num_classes == 2
    torch.testing.assert_close(torch.sort(torch.cat([c.x_train, c.x_test]), 0)[0],
                               torch.sort(torch.tensor(x), 0)[0])


def test_user_images_npy_uint8_and_image_folder(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "imgs.npy", imgs)
    d = load_file(tmp_path / "imgs.npy")
    assert d.event_shape == (1, 28, 28) and float(d.x_train.max()) <= 1.0
    for cls in ("cat", "dog"):
        (tmp_path / "folder" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(imgs[i]).save(tmp_path / "folder" / cls / f"{i}.png")
    f = load_file(tmp_path / "folder", image_size=28)
    assert f.event_shape == (1, 28, 28) and f.class_names == ("cat", "dog")


@pytest.mark.parametrize("content,match", [
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN or infinite"),
    (np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or infinite"),
    (np.zeros((0, 3)), "empty"),
    (np.zeros(5), "1-D array"),
    (np.zeros((2, 2, 2, 2, 2)), "rank 5"),
    (np.array([["a", "b"]]), "must hold numbers"),
    (np.full((4, 8, 8), 3.0), r"\[0, 1\]"),
])
def test_bad_arrays_get_one_line_errors(tmp_path, content, match):
    np.save(tmp_path / "bad.npy", content)
    with pytest.raises(DataError, match=match) as info:
        load_file(tmp_path / "bad.npy")
    assert "\n" not in str(info.value)


def test_bad_files_get_one_line_errors(tmp_path):
    np.save(tmp_path / "ok.npy", np.ones((10, 2)))
    raw = (tmp_path / "ok.npy").read_bytes()
    (tmp_path / "trunc.npy").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.npy").write_text("hello")
    (tmp_path / "x.txt").write_text("1,2")
    (tmp_path / "bad.csv").write_text("1,2\n3,abc\n")
    np.savez(tmp_path / "nokey.npz", foo=np.ones((3, 2)))
    np.savez(tmp_path / "labels.npz", x=np.ones((3, 2)), y=np.ones(4))
    cases = {"trunc.npy": "truncated", "text.npy": "truncated", "x.txt": "unsupported",
             "bad.csv": "truncated", "nokey.npz": "none named x", "labels.npz": "labels",
             "missing.npy": "does not exist"}
    for name, match in cases.items():
        with pytest.raises(DataError, match=match):
            load_file(tmp_path / name)


def test_unknown_dataset_and_missing_path():
    with pytest.raises(ConfigError, match="choose one of"):
        load_dataset("cifar")
    with pytest.raises(ConfigError, match="--data PATH"):
        load_dataset("file")
