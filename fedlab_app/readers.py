"""Readers of the data files fedlab knows: IDX (MNIST, Fashion-MNIST), CIFAR-10's python batches and its
offline JPEG copy (``cifar10_jpeg.npz``), and Hugging Face datasets of PIL images. Each returns uint8 arrays
(N, C, H, W) and int64 labels; a damaged file raises ValueError naming it.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
from pathlib import Path

import numpy as np

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def read_idx(path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array.

    Parameters
    ----------
    path : str or os.PathLike
        File in the IDX format: two zero bytes, a dtype code, the number of dimensions, then
        one big-endian uint32 per dimension, then the data.

    Returns
    -------
    np.ndarray
        Array with the stored shape, in native byte order.

    Raises
    ------
    ValueError
        Naming ``path``: a truncated or corrupt gzip stream, a bad header, or a size mismatch.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:  # truncated download, damaged copy
            raise ValueError(f"{path}: truncated or corrupt gzip file ({exc}); "
                             f"download it again or remove it") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: IDX header says {shape} ({expected} bytes), file has {len(raw)}")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx_dir(files: list[Path]):
    xtr, ytr, xte, yte = arrays = [read_idx(f) for f in files]
    for f, a, dims in zip(files, arrays, (3, 1, 3, 1)):  # magic 2051 images, 2049 labels
        if a.ndim != dims or a.dtype != np.uint8:
            raise ValueError(f"{f}: expected IDX magic {0x800 + dims} (uint8, {dims}-D), "
                             f"got {a.dtype} {a.shape}")
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError(f"{files[0].parent}: image and label counts differ")
    return xtr[:, None], ytr.astype(np.int64), xte[:, None], yte.astype(np.int64)


def decode_jpegs(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    if len(offsets) < 2:
        raise ValueError("no JPEG images in the npz")
    raw, out = blob.tobytes(), None
    for i in range(len(offsets) - 1):
        with Image.open(io.BytesIO(raw[offsets[i]:offsets[i + 1]]), formats=("JPEG",)) as im:
            a = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))  # (H, W, 3)
        if out is None:
            out = np.empty((len(offsets) - 1,) + a.shape, np.uint8)
        out[i] = a
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))  # (N, 3, H, W)


def read_cifar_npz(path):
    """(x_train, y_train, x_test, y_test) from the JPEG copy (shared/data/README.md): ~6 s."""
    with np.load(path, allow_pickle=False) as z:
        return tuple(a for s in ("train", "test") for a in (
            decode_jpegs(z[f"{s}_jpeg"], z[f"{s}_offsets"]), z[f"{s}_labels"].astype(np.int64)))


def read_cifar_batches(directory):
    """(x_train, y_train, x_test, y_test) from ``cifar-10-batches-py`` (pickles: trusted only)."""
    xs, ys = [], []
    for b in CIFAR_BATCHES:
        with open(Path(directory) / b, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[b"labels"], np.int64))
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def hf_to_arrays(ds, image_key: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Convert a Hugging Face dataset of PIL images to uint8 arrays.

    Parameters
    ----------
    ds : datasets.Dataset
        Rows with a PIL image column and an integer label column.
    image_key, label_key : str
        Column names.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``x`` uint8 (N, C, H, W) with C = 1 if the first image is grayscale ("L"), else 3
        (every image is converted to that mode), and ``y`` int64 (N,).
    """
    if len(ds) == 0:
        raise ValueError("hf_to_arrays: the dataset is empty")
    mode = "L" if ds[0][image_key].mode in ("L", "1") else "RGB"
    rows = []
    for batch in ds.iter(batch_size=1024):
        rows += [np.asarray(im.convert(mode)) for im in batch[image_key]]
    x = np.stack(rows)  # (N, H, W) or (N, H, W, 3)
    x = x[:, None] if mode == "L" else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, np.uint8), np.asarray(ds[label_key], np.int64)
