"""Data set readers, the disk/in-process caches, the hub conversion and not-found errors."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from fedlab_app import data
from fedlab_app.data import DatasetNotFoundError, hf_to_arrays, load_dataset, read_idx

FMNIST = Path("/usr/share/datasets/fashion-mnist")
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Empty cache dir, no FEDLAB_DATA_DIR, no default dirs, a fresh in-process cache."""
    monkeypatch.setenv("FEDLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FEDLAB_DATA_DIR", raising=False)
    for name in data.DEFAULT_DIRS:
        monkeypatch.setitem(data.DEFAULT_DIRS, name, [])
    data._load.cache_clear()
    yield tmp_path
    data._load.cache_clear()


def write_idx(path: Path, arr: np.ndarray, code: int = 0x08, gz: bool = True) -> None:
    """IDX: 0, 0, dtype code, ndim, big-endian uint32 dims, big-endian data."""
    big = {0x08: ">u1", 0x0C: ">i4"}[code]
    raw = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw += arr.astype(big).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_idx_dir(d: Path, n=12, m=5, seed=0):
    """Four tiny IDX files (train gz, test raw); returns (x_train, y_train, x_test, y_test)."""
    rng = np.random.default_rng(seed)
    arrays = (rng.integers(0, 256, (n, 4, 3), dtype=np.uint8), rng.integers(0, 3, n).astype(np.uint8),
              rng.integers(0, 256, (m, 4, 3), dtype=np.uint8), rng.integers(0, 3, m).astype(np.uint8))
    d.mkdir(parents=True, exist_ok=True)
    for i, (stem, a) in enumerate(zip(IDX, arrays)):
        write_idx(d / (stem + (".gz" if i < 2 else "")), a, gz=i < 2)
    return arrays


def jpeg(rgb) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 6), tuple(rgb)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_cifar_npz(path: Path, colors_train, colors_test):
    """A CIFAR-format npz (see shared/data/README.md) of solid-colour 8x6 JPEGs."""
    arrays = {}
    for split, colors in (("train", colors_train), ("test", colors_test)):
        blobs = [jpeg(c) for c in colors]
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(blobs), np.uint8)
        arrays[f"{split}_offsets"] = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
        arrays[f"{split}_labels"] = np.arange(len(colors), dtype=np.uint8) % 10
    np.savez(path, class_names=np.array([str(i) for i in range(10)]), **arrays)


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, gz):
    img = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", img, gz=gz)
    got = read_idx(tmp_path / "a")
    assert got.dtype == np.uint8 and np.array_equal(got, img)
    ints = np.array([1, -2, 70000], dtype=np.int32)  # code 0x0C: big-endian int32
    write_idx(tmp_path / "b", ints, code=0x0C, gz=gz)
    assert np.array_equal(read_idx(tmp_path / "b"), ints)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01\0\0\0\1x")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    raw = bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"abc"  # says 10 bytes, has 3
    (tmp_path / "short").write_bytes(raw)
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "short")


def test_truncated_gz_names_the_file(isolated):
    make_idx_dir(isolated / "d")
    f = isolated / "d" / "train-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:-20])  # cut before the gzip trailer
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: truncated or corrupt gzip"):
        read_idx(f)
    with pytest.raises(ValueError, match="truncated or corrupt gzip"):
        load_dataset("mnist", data_dir=str(isolated / "d"), source="local")


def test_load_idx_dataset_from_data_dir_and_env_subdir(isolated, monkeypatch):
    xtr, ytr, xte, yte = make_idx_dir(isolated / "given")
    d = load_dataset("fashion_mnist", data_dir=str(isolated / "given"), source="local")
    assert d.x_train.shape == (12, 1, 4, 3) and d.x_test.shape == (5, 1, 4, 3)
    assert d.x_train.dtype == np.uint8 and d.y_train.dtype == d.y_test.dtype == np.int64
    assert np.array_equal(d.x_train[:, 0], xtr) and np.array_equal(d.y_test, yte)
    assert d.num_classes == int(max(ytr.max(), yte.max())) + 1 and d.name == "fashion_mnist"
    assert d.mean == pytest.approx(((xtr / 255).mean(),)) and d.std == pytest.approx(((xtr / 255).std(),))
    make_idx_dir(isolated / "env" / "mnist", seed=1)  # $FEDLAB_DATA_DIR/mnist
    monkeypatch.setenv("FEDLAB_DATA_DIR", str(isolated / "env"))
    m = load_dataset("mnist", source="local")
    assert m.name == "mnist" and not np.array_equal(m.x_train, d.x_train)


def test_idx_with_wrong_magic_is_rejected(isolated):
    make_idx_dir(isolated / "d")
    write_idx(isolated / "d" / "train-labels-idx1-ubyte.gz", np.zeros((12, 2), np.uint8))
    with pytest.raises(ValueError, match="magic 2049"):
        load_dataset("mnist", data_dir=str(isolated / "d"), source="local")


# ---------------------------------------------------------------- caches


def test_disk_cache_roundtrip_is_used_and_tracks_the_source(isolated, monkeypatch):
    make_idx_dir(isolated / "d")
    first = load_dataset("mnist", data_dir=str(isolated / "d"), source="local")
    assert load_dataset("mnist", data_dir=str(isolated / "d"), source="local") is first  # memory
    cached = list((isolated / "cache").glob("mnist-*"))
    assert len(cached) == 1 and not list((isolated / "cache").glob(".*tmp"))
    assert sorted(f.name for f in cached[0].iterdir()) == sorted([f"{k}.npy" for k in data._CACHE_KEYS]
                                                                  + ["manifest.json"])
    data._load.cache_clear()

    def boom(files):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(data, "read_idx_dir", boom)
    second = load_dataset("mnist", data_dir=str(isolated / "d"), source="local")
    assert second is not first
    for f in ("x_train", "y_train", "x_test", "y_test", "num_classes", "mean", "std"):
        assert np.array_equal(getattr(first, f), getattr(second, f)), f
    assert not second.x_train.flags.writeable  # shared arrays are read-only
    for f in ("x_train", "y_train", "x_test", "y_test"):  # memory-mapped: one copy for all processes
        assert isinstance(getattr(second, f), np.memmap), f
    # A changed source file (new size/mtime) gets a new cache entry.
    data._load.cache_clear()
    make_idx_dir(isolated / "d", n=13)
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("mnist", data_dir=str(isolated / "d"), source="local")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "manifest", "missing"])
def test_corrupt_cache_file_is_rebuilt(isolated, damage):
    make_idx_dir(isolated / "d")
    good = np.array(load_dataset("mnist", data_dir=str(isolated / "d"), source="local").x_train)  # a copy:
    (path,) = (isolated / "cache").glob("mnist-*")  # the map would see the damage done in place below
    x = path / "x_train.npy"
    size = x.stat().st_size
    if damage == "truncate":  # cut short: the manifest's size no longer matches
        x.write_bytes(x.read_bytes()[:-5])
    elif damage == "garbage":  # same size, no .npy header
        x.write_bytes(b"\0" * size)
    elif damage == "manifest":
        (path / "manifest.json").write_text("{")
    else:
        x.unlink()
    data._load.cache_clear()
    again = load_dataset("mnist", data_dir=str(isolated / "d"), source="local")
    assert np.array_equal(again.x_train, good)
    assert x.stat().st_size == size and data._read_cache(path) is not None  # rewritten whole


def test_unwritable_cache_warns_and_still_loads(isolated, monkeypatch):
    make_idx_dir(isolated / "d")
    (isolated / "afile").write_text("not a directory")
    monkeypatch.setenv("FEDLAB_CACHE_DIR", str(isolated / "afile" / "cache"))
    with pytest.warns(UserWarning, match="could not write the data cache"):
        d = load_dataset("mnist", data_dir=str(isolated / "d"), source="local")
    assert d.x_train.shape == (12, 1, 4, 3)


# ---------------------------------------------------------------- CIFAR-10 readers


def test_cifar_npz_reader_on_tiny_jpegs(isolated):
    colors = [(250, 10, 10), (10, 250, 10), (10, 10, 250)]
    write_cifar_npz(isolated / "cifar10_jpeg.npz", colors, [(128, 128, 128)])
    d = load_dataset("cifar10", data_dir=str(isolated), source="local")
    assert d.x_train.shape == (3, 3, 6, 8) and d.x_test.shape == (1, 3, 6, 8)
    assert d.y_train.tolist() == [0, 1, 2] and d.y_test.dtype == np.int64
    for img, c in zip(d.x_train, colors):  # (3, H, W): solid colour, up to JPEG rounding
        assert np.abs(img.reshape(3, -1).mean(1) - c).max() < 4


def test_cifar_python_batches_reader(isolated, monkeypatch):
    rng = np.random.default_rng(0)
    root = isolated / "env" / "cifar-10-batches-py"
    root.mkdir(parents=True)
    want = {}
    for name, n in [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", 3)]:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, n).tolist()
        want[name] = (x, y)
        with open(root / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": y, b"batch_label": b"x"}, f)
    monkeypatch.setenv("FEDLAB_DATA_DIR", str(isolated / "env"))
    d = load_dataset("cifar10", source="local")
    assert d.x_train.shape == (10, 3, 32, 32) and d.x_test.shape == (3, 3, 32, 32)
    assert np.array_equal(d.x_train[0].reshape(-1), want["data_batch_1"][0][0])
    assert np.array_equal(d.x_train[9].reshape(-1), want["data_batch_5"][0][1])
    assert d.y_test.tolist() == want["test_batch"][1]


# ---------------------------------------------------------------- hub conversion


def _hf(mode, n=3, size=(5, 4)):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]
    ds = datasets.Dataset.from_dict({"img": [Image.fromarray(a, mode=mode) for a in arrays],
                                     "fine_label": list(range(n))})
    return ds, arrays


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_hf_to_arrays(mode):
    ds, arrays = _hf(mode)
    x, y = hf_to_arrays(ds, "img", "fine_label")
    assert x.dtype == np.uint8 and y.dtype == np.int64 and y.tolist() == [0, 1, 2]
    assert x.shape == ((3, 1, 4, 5) if mode == "L" else (3, 3, 4, 5))
    want = np.stack(arrays)[:, None] if mode == "L" else np.stack(arrays).transpose(0, 3, 1, 2)
    assert np.array_equal(x, want)  # PNG inside datasets: lossless


def test_hub_source_through_a_fake_hub(isolated, monkeypatch):
    import datasets

    calls = []

    def fake_load(path, name=None):  # exactly what flwr-datasets' FederatedDataset calls
        calls.append(path)
        return datasets.DatasetDict(train=_hf("RGB", 4)[0], test=_hf("RGB", 2)[0])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    d = load_dataset("cifar100", source="auto")
    assert calls == ["uoft-cs/cifar100"] and d.x_train.shape == (4, 3, 4, 5)
    data._load.cache_clear()
    assert load_dataset("cifar100", source="hub").x_test.shape == (2, 3, 4, 5)
    assert calls == ["uoft-cs/cifar100"]  # second time from the disk cache

    def offline(path, name=None):
        raise ConnectionError("no route to the hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DatasetNotFoundError, match="(?s)zalando-datasets/fashion_mnist.*no route"):
        load_dataset("fashion_mnist", source="hub")


# ---------------------------------------------------------------- errors


def test_missing_dataset_names_every_place_searched(isolated, monkeypatch):
    monkeypatch.setenv("FEDLAB_DATA_DIR", str(isolated / "envdir"))
    monkeypatch.setitem(data.DEFAULT_DIRS, "fashion_mnist", [str(isolated / "system")])
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion_mnist", data_dir=str(isolated / "given"), source="local")
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for place in ("given", "given/fashion-mnist", "envdir/fashion-mnist", "system"):
        assert str(isolated / place) in msg, place
    assert "apt-get install -y dataset-fashion-mnist" in msg and "FEDLAB_DATA_DIR" in msg
    assert "source='local'" in msg and "hub" in msg
    with pytest.raises(DatasetNotFoundError, match="cifar10_jpeg.npz(?s:.*)cifar-10-batches-py"):
        load_dataset("cifar10", data_dir=str(isolated), source="local")
    with pytest.raises(DatasetNotFoundError, match="no offline copy"):
        load_dataset("cifar100", source="local")


def test_unknown_name_or_source():
    with pytest.raises(ValueError, match="'svhn'.*fashion_mnist, mnist, cifar10, cifar100"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="'web'.*auto, local, hub"):
        load_dataset("mnist", source="web")


# ---------------------------------------------------------------- the real data sets


@pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason=f"Fashion-MNIST IDX files not in {FMNIST}: "
                           "apt-get install -y dataset-fashion-mnist")
def test_real_fashion_mnist():
    d = load_dataset("fashion_mnist", source="local")  # default search path; session cache
    assert d.x_train.shape == (60000, 1, 28, 28) and d.x_test.shape == (10000, 1, 28, 28)
    assert d.x_train.dtype == np.uint8 and d.y_train.dtype == np.int64 and d.num_classes == 10
    assert np.bincount(d.y_train).tolist() == [6000] * 10
    assert d.mean[0] == pytest.approx(0.2860, abs=1e-3) and d.std[0] == pytest.approx(0.3530, abs=1e-3)


def _cifar_npz_at_hand() -> bool:
    dirs = data.DEFAULT_DIRS["cifar10"] + [os.environ.get("FEDLAB_DATA_DIR", "")]
    return any(d and (Path(d) / "cifar10_jpeg.npz").is_file() for d in dirs)


@pytest.mark.slow  # decodes all 60,000 JPEGs: 12 s on 2 cores
@pytest.mark.skipif(not _cifar_npz_at_hand(), reason="cifar10_jpeg.npz not in shared/data/ "
                    "or $FEDLAB_DATA_DIR (see shared/data/README.md)")
def test_real_cifar10_jpeg_npz():
    d = load_dataset("cifar10", source="local")  # ~6 s to decode uncached, then the cache
    assert d.x_train.shape == (50000, 3, 32, 32) and d.x_test.shape == (10000, 3, 32, 32)
    assert d.x_train.dtype == np.uint8 and d.num_classes == 10
    assert np.bincount(d.y_train).tolist() == [5000] * 10
    assert np.bincount(d.y_test).tolist() == [1000] * 10
    assert d.mean == pytest.approx((0.4913, 0.4821, 0.4465), abs=1e-3)  # README's numbers
    assert d.std == pytest.approx((0.2452, 0.2428, 0.2606), abs=1e-3)
