"""Each rank reads only its users (``ncf.data.rankload``): the same rows, held-out items,
candidates and training negatives as the whole file read by one process and then filtered by
the ranks' user ranges; errors name the file and line as the reader does; a file changed
between the passes is refused."""

from __future__ import annotations

import gzip
import threading

import numpy as np
import pandas as pd
import pytest

from ncf.data import rankload, readers
from ncf.data.datasets import DataConfig, load_dataset
from ncf.data.partition import UserShardSampler, user_bounds
from ncf.errors import ConfigError, DataError
from ncf.train import shardckpt

CHUNK = 400  # bytes: every file below is read in many chunks


class ThreadSum:
    """An all-reduce between threads standing for ranks (what torch.distributed does between processes)."""

    def __init__(self, world: int):
        self.barrier, self.slots = threading.Barrier(world, timeout=60), [None] * world

    def allsum(self, rank: int):
        def f(x: np.ndarray) -> np.ndarray:
            self.slots[rank] = x.copy()
            self.barrier.wait()
            out = sum(self.slots)
            self.barrier.wait()
            return out
        return f


def rank_datasets(cfg: DataConfig, world: int, chunk: int = CHUNK):
    """``load_rank_dataset`` of every rank, run side by side (threads), as under torchrun."""
    sums, out, errors = ThreadSum(world), [None] * world, [None] * world

    def run(r):
        try:
            out[r] = rankload.load_rank_dataset(cfg, r, world, sums.allsum(r), chunk_bytes=chunk)
        except Exception as e:  # noqa: BLE001 - re-raised below, in the test's thread
            errors[r] = e
            sums.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = next((e for e in errors if e is not None and not isinstance(e, threading.BrokenBarrierError)), None)
    if first is not None:
        raise first
    return out


def _triples(batch):
    u, i, y = (t.numpy() for t in batch)
    return sorted(zip(u.tolist(), i.tolist(), y.tolist(), strict=True))


def assert_parts_equal_whole(cfg: DataConfig, world: int, chunk: int = CHUNK) -> None:
    """Every rank's part equals the whole-file dataset filtered to the rank's users: bounds,
    training rows, held-out items and candidates, the report, and the rank's training samples
    (positives and counter-based negatives) for two epochs."""
    whole = load_dataset(cfg)
    bounds = user_bounds(np.diff(whole.train.matrix.indptr), world)
    parts = rank_datasets(cfg, world, chunk)
    covered = 0
    for r, p in enumerate(parts):
        lo, hi = bounds[r], bounds[r + 1]
        assert p.part.bounds.tolist() == bounds.tolist(), "a user lands on another rank"
        assert p.part.users == (lo, hi) and p.part.rank == r and p.part.world == world
        assert np.array_equal(p.part.train_counts, np.diff(whole.train.matrix.indptr))
        assert p.train.user_map == whole.train.user_map and p.train.item_map == whole.train.item_map
        # exactly the rank's rows: none lost, none added, none of another rank's users
        own = whole.train.matrix[lo:hi]
        assert p.train.matrix.nnz == own.nnz and (p.train.matrix[lo:hi] != own).nnz == 0
        covered += p.train.matrix.nnz
        for name in ("valid", "test"):
            w, h = getattr(whole, name), getattr(p, name)
            if w is None:
                assert h is None
                continue
            m = (w.users >= lo) & (w.users < hi)
            assert h.users.tolist() == w.users[m].tolist() and h.items.tolist() == w.items[m].tolist()
            assert np.array_equal(h.candidates, w.candidates[m])
        assert p.report == whole.report and p.n_interactions == whole.n_interactions
        assert p.train_nnz == whole.train.nnz
        assert p.part.n_test == len(whole.test)
        assert p.part.n_valid == (len(whole.valid) if whole.valid is not None else None)
        # the training samples of the rank: the same negatives as the whole-file sampler's
        mine = UserShardSampler.for_rank(p.train.matrix, p.part.bounds, r, 3, 7, counts=p.part.train_counts)
        ref = UserShardSampler.for_rank(whole.train.matrix, bounds, r, 3, 7)
        for epoch in (1, 2):
            a, b = mine.plan(epoch), ref.plan(epoch)
            assert len(a) == len(b) and _triples(a.batch(0, len(a))) == _triples(b.batch(0, len(b)))
    assert covered == whole.train.nnz


def _ratings(path, n_users=120, n_items=60, seed=0, ids=lambda u: f"{u}", repeats=True, times=True):
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(n_users):
        n = int(rng.integers(1, 25)) if u % 7 else 1  # some users too small for a holdout
        items = rng.choice(n_items, n, replace=repeats)  # repeats: duplicate rows, collapsed
        for i in items:
            t = f"\t{int(rng.integers(0, 40))}" if times else ""
            lines.append(f"{ids(u)}\t{i}\t{int(rng.integers(1, 6))}{t}\n")
    rng.shuffle(lines)
    path.write_text("".join(lines))
    return path


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("times", [True, False])
def test_rank_parts_equal_the_whole_file_then_filtered(tmp_path, world, times):
    path = _ratings(tmp_path / "r.tsv", times=times)
    cfg = DataConfig(source=str(path), rating_col="2", time_col="3" if times else None, split_draws="per_user",
                     seed=3)
    assert_parts_equal_whole(cfg, world)


def test_repeated_rows_move_the_ranges_and_a_third_pass_reads_them(tmp_path, monkeypatch):
    # user 0 has 40 rows of one item: its row count says 40, its training count is 1
    lines = [f"0\t5\t1\t{t}\n" for t in range(40)] + [f"{u}\t{i}\t1\t{i}\n" for u in range(1, 30) for i in range(4)]
    path = tmp_path / "r.tsv"
    path.write_text("".join(lines))
    calls = []
    real = rankload.collect_ratings
    monkeypatch.setattr(rankload, "collect_ratings", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    cfg = DataConfig(source=str(path), rating_col="2", time_col="3", split_draws="per_user")
    assert_parts_equal_whole(cfg, 2)
    # the ranges moved: after the two first reads, one rank reads again, only the users it gained
    assert len(calls) == 3 and len(calls[2]) == 1
    (a, b), = calls[2]
    first = [c[0] for c in calls[:2]]  # the gained users: in the other rank's first range, not in its own
    assert a < b and any(lo <= a and b <= hi for lo, hi in first) and any(b <= lo or a >= hi for lo, hi in first)


def test_min_rating_skipped_rows_and_no_validation(tmp_path):
    path = _ratings(tmp_path / "r.tsv")
    text = path.read_text().splitlines(keepends=True)
    text.insert(300, "12\tnot-a-row\n")  # a malformed row, skipped and counted as the reader does
    text.insert(5, "\n")
    path.write_text("".join(text))
    cfg = DataConfig(source=str(path), rating_col="2", time_col="3", split_draws="per_user", min_rating=2,
                     on_bad_lines="skip", valid=False)
    assert_parts_equal_whole(cfg, 2)
    whole = load_dataset(cfg)
    assert whole.report["read"]["skipped"] == 1 and whole.report["read"]["below_min_rating"] > 0


def test_string_ids_integer_in_some_chunks_only(tmp_path):
    # the first chunks' users are integers ("007" and "7" among them); later ones are not: the
    # whole column is strings, so "007" and "7" are two users, as read_table reads the file
    def ids(u):
        return {3: "007", 4: "7"}.get(u, f"{u}" if u < 60 else f"user-{u}")
    path = _ratings(tmp_path / "r.tsv", ids=ids)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(sorted(lines, key=lambda ln: ln.startswith("user-"))))
    cfg = DataConfig(source=str(path), rating_col="2", time_col="3", split_draws="per_user")
    assert_parts_equal_whole(cfg, 2)
    assert {"007", "7"} <= set(load_dataset(cfg).train.user_map.raw_ids)


def test_gzip_parquet_and_a_csv_header(tmp_path):
    path = _ratings(tmp_path / "r.tsv", n_users=200)
    frame = pd.read_csv(path, sep="\t", header=None, names=["user", "item", "rating", "time"])
    gz = tmp_path / "r.tsv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    frame.to_csv(tmp_path / "r.csv", index=False)
    pytest.importorskip("pyarrow")
    frame.to_parquet(tmp_path / "r.parquet")
    for src, kw in ((gz, {"rating_col": "2", "time_col": "3"}),
                    (tmp_path / "r.csv", {"user_col": "user", "item_col": "item", "time_col": "time"}),
                    (tmp_path / "r.parquet", {"user_col": "user", "item_col": "item", "time_col": "time"})):
        cfg = DataConfig(source=str(src), split_draws="per_user", **kw)
        assert_parts_equal_whole(cfg, 2, chunk=40_000)  # Parquet: record batches of 1,250 rows


def _ncf_files(folder, n_users=40, n_items=30, seed=0):
    rng = np.random.default_rng(seed)
    train, test, neg = [], [], []
    for u in range(n_users):
        items = rng.choice(n_items, int(rng.integers(2, 12)), replace=False)
        for t, i in enumerate(items[:-1]):
            train.append(f"{u}\t{i}\t5\t{t}\n")
        test.append(f"{u}\t{items[-1]}\t5\t99\n")
        negs = rng.choice(n_items, int(rng.integers(3, 9)))  # repeats and seen items: dropped
        neg.append(f"({u},{items[-1]})\t" + "\t".join(map(str, negs)) + "\n")
    rng.shuffle(train)
    (folder / "toy.train.rating").write_text("".join(train))
    (folder / "toy.test.rating").write_text("".join(test))
    (folder / "toy.test.negative").write_text("".join(neg))
    return folder / "toy.train.rating"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ncf_layout_rank_parts_equal_the_whole(tmp_path, world):
    src = _ncf_files(tmp_path)
    assert_parts_equal_whole(DataConfig(source=str(src), split_draws="per_user", n_neg_eval=5), world)


def test_ml100k_rank_parts_equal_the_whole(ml100k_dir):
    cfg = DataConfig(source="ml-100k", data_dir=str(ml100k_dir.parent), split_draws="per_user")
    assert_parts_equal_whole(cfg, 2, chunk=200_000)


def test_per_user_draws_change_only_the_candidates_and_ties_where_there_are_timestamps(tmp_path):
    path = _ratings(tmp_path / "r.tsv")
    seq = load_dataset(DataConfig(source=str(path), rating_col="2", time_col="3"))
    per = load_dataset(DataConfig(source=str(path), rating_col="2", time_col="3", split_draws="per_user"))
    # the held-out items differ only where a user's latest interactions share a timestamp
    latest: dict = {}
    for line in path.read_text().splitlines():
        u, i, _, t = (int(x) for x in line.split("\t"))
        latest[u, i] = max(latest.get((u, i), -1), t)
    raw = seq.train.user_map.raw, seq.train.item_map.raw
    for a, b in ((seq.test, per.test), (seq.valid, per.valid)):
        assert np.array_equal(a.users, b.users)
        diff = np.flatnonzero(a.items != b.items)
        assert len(diff) and all(latest[raw[0](a.users[k]), raw[1](a.items[k])]
                                 == latest[raw[0](b.users[k]), raw[1](b.items[k])] for k in diff)
    assert not np.array_equal(seq.test.candidates, per.test.candidates)
    assert "split_draws" not in DataConfig().to_dict() and DataConfig(split_draws="per_user").to_dict()["split_draws"]
    with pytest.raises(ConfigError, match="applies to the loo split"):
        DataConfig(split="ratio", split_draws="per_user")
    with pytest.raises(ConfigError, match="per-user split draws"):
        rankload.load_rank_dataset(DataConfig(source=str(path)), 0, 1)


def test_a_malformed_row_is_named_by_file_and_line_as_the_reader_names_it(tmp_path):
    path = _ratings(tmp_path / "r.tsv")
    lines = path.read_text().splitlines(keepends=True)
    lines[700] = "5\t7\tfive\t3\n"  # line 701, many chunks into the file
    path.write_text("".join(lines))
    cfg = DataConfig(source=str(path), rating_col="2", time_col="3", split_draws="per_user")
    with pytest.raises(DataError) as whole:
        load_dataset(cfg)
    with pytest.raises(DataError) as part:
        rank_datasets(cfg, 2)
    assert f"{path}:701: field 'rating' (column 2): 'five' is not a number" in str(whole.value)
    assert str(part.value) == str(whole.value)
    # an unknown column is said as read_table says it
    bad = DataConfig(source=str(path), rating_col="9", split_draws="per_user")
    with pytest.raises(DataError, match="rating column 9 requested but rows have at most 4 field"):
        rank_datasets(bad, 2)


def test_a_file_changed_between_the_passes_is_refused(tmp_path, monkeypatch):
    path = _ratings(tmp_path / "r.tsv")
    real = rankload.scan_ratings

    def scan_then_append(*a, **k):
        scan = real(*a, **k)
        with open(path, "a") as f:  # another process appends while the ranks read
            f.write("999\t1\t5\t1\n")
        return scan

    monkeypatch.setattr(rankload, "scan_ratings", scan_then_append)
    cfg = DataConfig(source=str(path), rating_col="2", time_col="3", split_draws="per_user")
    with pytest.raises(DataError, match="changed while it was being read"):
        rankload.load_rank_dataset(cfg, 0, 1, chunk_bytes=CHUNK)


def test_the_ranks_training_rows_assemble_into_the_seen_filter(tmp_path):
    path = _ratings(tmp_path / "r.tsv")
    cfg = DataConfig(source=str(path), rating_col="2", time_col="3", split_draws="per_user")
    parts = rank_datasets(cfg, 3)
    run = tmp_path / "run"
    for p in parts:
        shardckpt.save_train_rows(run, p.part.rank, p.train.matrix, *p.part.users)
    assert shardckpt.assemble_train(run)
    from ncf.checkpoint import load_train_matrix

    assert (load_train_matrix(run) != load_dataset(cfg).train.matrix).nnz == 0
    shardckpt.train_file(run, 1).unlink()
    with pytest.raises(ValueError, match="train-rank2.safetensors: rows from user"):
        shardckpt.assemble_train(run)


def test_chunks_add_up_to_the_reader(tmp_path):
    path = _ratings(tmp_path / "r.tsv")
    whole = readers.read_table(path, 0, 1, 2, 3)
    chunks = list(readers.iter_table(path, 0, 1, 2, 3, chunk_bytes=CHUNK))
    assert len(chunks) > 5
    assert np.array_equal(np.concatenate([c.users for c in chunks]), whole.users)
    assert np.array_equal(np.concatenate([c.timestamps for c in chunks]), whole.timestamps)
    assert readers.merge_reports([c.report for c in chunks]) == whole.report
