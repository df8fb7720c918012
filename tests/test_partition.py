"""Partitioning schemes, the train/validation split, label counts and the label plot."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedlab_app import partition as P
from fedlab_app.partition import PARTITIONERS, label_counts, partition_indices, train_val_split
from fedlab_app.plots import plot_label_distribution

RANDOM_SCHEMES = ("iid", "dirichlet", "pathological", "shard")


@pytest.fixture(scope="module")
def labels():
    """2,000 labels, 200 of each of 10 classes, in random order."""
    return np.random.default_rng(0).permutation(np.repeat(np.arange(10), 200))


def _entropy(counts):
    p = counts / counts.sum(1, keepdims=True)
    return float(np.mean(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), 1)))


@pytest.mark.parametrize("scheme", PARTITIONERS)
def test_disjoint_sorted_int64_and_deterministic(labels, scheme):
    parts = partition_indices(labels, 10, scheme, seed=1)
    assert len(parts) == 10
    for p in parts:
        assert p.dtype == np.int64 and len(p) >= 1
        assert np.all(np.diff(p) > 0) and p.min() >= 0 and p.max() < len(labels)
    flat = np.concatenate(parts)
    if scheme == "full":  # not a partition: every client holds the whole training set
        assert all(np.array_equal(p, np.arange(len(labels))) for p in parts)
    else:
        assert len(np.unique(flat)) == len(flat)  # disjoint
    again = partition_indices(labels, 10, scheme, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    if scheme in RANDOM_SCHEMES:
        other = partition_indices(labels, 10, scheme, seed=2)
        assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


@pytest.mark.parametrize("scheme", ["iid", "label_split", "shard"])
def test_covers_every_sample(labels, scheme):
    parts = partition_indices(labels, 10, scheme, seed=3)  # 2000 = 10 clients x 2 shards x 100
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


def test_iid_sizes_differ_by_at_most_one_and_are_mixed(labels):
    parts = partition_indices(labels[:1997], 7, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1997
    counts = label_counts(labels, partition_indices(labels, 4, "iid", seed=0), 10)
    assert counts.min() > 20  # every client sees every class (expected 50 each)


def test_iid_equals_flwr_iid_partitioner_on_shuffled_data(labels):
    import datasets
    from flwr_datasets.partitioner import IidPartitioner

    part = IidPartitioner(num_partitions=6)
    part.dataset = datasets.Dataset.from_dict(
        {"label": labels, "idx": np.arange(len(labels))}).shuffle(seed=5)
    want = [np.sort(np.asarray(part.load_partition(i)["idx"])) for i in range(6)]
    got = partition_indices(labels, 6, "iid", seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("scheme", ["dirichlet", "pathological", "shard"])
def test_fast_read_equals_flwr_load_partition(labels, scheme, monkeypatch):
    fast = partition_indices(labels, 8, scheme, seed=4, alpha=0.3)
    monkeypatch.setattr(P, "_FAST_READ", False)  # 8 x load_partition(i)["idx"]
    slow = partition_indices(labels, 8, scheme, seed=4, alpha=0.3)
    assert all(np.array_equal(a, b) for a, b in zip(fast, slow))


@pytest.mark.parametrize("cpc", [1, 2, 3])
def test_pathological_clients_have_at_most_classes_per_client_labels(labels, cpc):
    parts = partition_indices(labels, 12, "pathological", seed=0, classes_per_client=cpc)
    assert all(1 <= len(np.unique(labels[p])) <= cpc for p in parts)


def test_label_split_gives_disjoint_label_sets_covering_all_labels(labels):
    parts = partition_indices(labels, 4, "label_split", seed=0)
    sets = [set(np.unique(labels[p]).tolist()) for p in parts]
    assert sum(len(s) for s in sets) == 10 and set().union(*sets) == set(range(10))
    assert sets[1] == {1, 5, 9}  # label c -> client c % K
    odd = np.array([3, 7, 9, 3, 9, 7, 7])  # non-contiguous labels: by rank, 3->0, 7->1, 9->0
    assert [p.tolist() for p in partition_indices(odd, 2, "label_split", 0)] == [[0, 2, 3, 4],
                                                                                 [1, 5, 6]]
    with pytest.raises(ValueError, match="num_partitions.*distinct labels.*11"):
        partition_indices(labels, 11, "label_split", seed=0)


def test_shard_clients_see_few_labels(labels):
    parts = partition_indices(labels, 10, "shard", seed=0, shards_per_client=2)
    assert all(len(p) == 200 for p in parts)
    assert all(len(np.unique(labels[p])) <= 4 for p in parts)  # 2 shards of sorted labels
    assert np.mean([len(np.unique(labels[p])) for p in parts]) <= 2.5


def test_dirichlet_small_alpha_is_more_skewed(labels):
    ent = {a: _entropy(label_counts(labels, partition_indices(labels, 10, "dirichlet", seed=0,
                                                              alpha=a), 10))
           for a in (0.1, 1.0, 100.0)}
    assert ent[0.1] < ent[1.0] < ent[100.0]
    assert ent[100.0] > 0.95 * np.log(10)  # near uniform


def test_min_size_is_enforced(labels):
    parts = partition_indices(labels, 20, "dirichlet", seed=0, alpha=0.5, min_size=20)
    assert min(len(p) for p in parts) >= 20
    with pytest.raises(ValueError, match="dirichlet"):
        partition_indices(labels, 200, "dirichlet", seed=0, alpha=0.05, min_size=9)
    with pytest.raises(ValueError, match="min_size=300"):
        partition_indices(labels, 10, "iid", seed=0, min_size=300)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(scheme="bogus"), r"scheme must be one of .*'iid'.*got 'bogus'"),
    (dict(num_partitions=0), r"num_partitions must be in \[1, .*2000.*got 0"),
    (dict(num_partitions=2001), r"num_partitions .*got 2001"),
    (dict(scheme="dirichlet", alpha=0.0), r"alpha must be > 0.*got 0.0"),
    (dict(scheme="dirichlet", alpha=-1), r"alpha must be > 0.*got -1"),
    (dict(scheme="pathological", classes_per_client=0), r"classes_per_client must be in \[1, 10\].*got 0"),
    (dict(scheme="pathological", classes_per_client=11), r"classes_per_client .*got 11"),
    (dict(scheme="shard", shards_per_client=0), r"shards_per_client must be in .*got 0"),
    (dict(scheme="shard", shards_per_client=500), r"shards_per_client .*got 500"),
    (dict(min_size=-1), r"min_size must be >= 0, got -1"),
])
def test_bad_arguments_raise_clear_errors(labels, kwargs, pattern):
    args = dict(num_partitions=10, scheme="iid", seed=0) | kwargs
    with pytest.raises(ValueError, match=pattern):
        partition_indices(labels, **args)


def test_labels_must_be_1d_integers(labels):
    with pytest.raises(ValueError, match="1-D integer"):
        partition_indices(labels.astype(float), 10, "iid", 0)
    with pytest.raises(ValueError, match="1-D integer"):
        partition_indices(labels.reshape(2, -1), 2, "iid", 0)


def test_60k_labels_into_100_iid_partitions_is_fast():
    big = np.random.default_rng(0).integers(0, 10, 60_000)
    t = time.perf_counter()
    parts = partition_indices(big, 100, "iid", seed=0)
    assert time.perf_counter() - t < 0.5  # measured ~3 ms
    assert {len(p) for p in parts} == {600}


def test_train_val_split():
    tr, va = train_val_split(1000, 0.1, seed=0)
    assert len(tr) == 900 and len(va) == 100 and tr.dtype == va.dtype == np.int64
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(1000))
    assert np.array_equal(va, train_val_split(1000, 0.1, seed=0)[1])
    assert not np.array_equal(va, train_val_split(1000, 0.1, seed=1)[1])
    tr, va = train_val_split(50, 0.0, seed=0)
    assert len(va) == 0 and np.array_equal(tr, np.arange(50))
    assert len(train_val_split(1, 0.9, seed=0)[0]) == 1  # train never empty
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=rf"val_fraction must be in \[0, 1\), got {bad}"):
            train_val_split(10, bad, 0)


def test_label_counts_by_hand():
    y = np.array([0, 1, 1, 2, 2, 2])
    counts = label_counts(y, [np.array([0, 1]), np.array([2, 3, 4, 5])], num_classes=4)
    assert counts.tolist() == [[1, 1, 0, 0], [0, 1, 3, 0]] and counts.dtype == np.int64


def test_plot_label_distribution_writes_png(labels, tmp_path):
    counts = label_counts(labels, partition_indices(labels, 12, "dirichlet", 0, alpha=0.3), 10)
    out = tmp_path / "plots" / "labels.png"
    plot_label_distribution(counts, out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
