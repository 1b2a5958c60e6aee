"""sasrec (issue 21): sequence building, shapes, causality, a planted next-item rule,
checkpoint round trip, refusal without timestamps, score_histories against score_all."""

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ncf.checkpoint import load_model, save_model
from ncf.config import TrainConfig
from ncf.data.interactions import Interactions
from ncf.data.split import Dataset, HoldOut, leave_one_out, sample_candidates
from ncf.models import get_model_class
from ncf.models.sasrec import SASRec
from ncf.models.sequences import latest, ordered_histories, pad_histories, windows

SMALL = {"max_len": 8, "dim": 16, "dropout": 0.0, "epochs": 40, "lr": 0.01, "batch_size": 64}


def model(n_users=5, n_items=12, **kw):
    torch.manual_seed(0)
    return SASRec.from_params(n_users, n_items, **{**SMALL, "blocks": 1, **kw})


def successor_dataset(n_users=80, n_items=20, length=12, seed=0, times=True) -> Dataset:
    """Each user's history is a run of consecutive items (mod n_items) from a random start:
    the next item is always the latest + 1. Valid and test are the two latest items."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        start = rng.integers(n_items)
        users += [u] * length
        items += [(start + t) % n_items for t in range(length)]
        ts += list(range(length))
    full = Interactions.from_raw(np.array(users), np.array(items), np.array(ts) if times else None)
    train, tu, ti, _ = leave_one_out(full, rng)
    train, vu, vi, _ = leave_one_out(train, rng)
    return Dataset("successor", train, HoldOut(tu, ti, sample_candidates(full.matrix, tu, ti, 10, rng)),
                   HoldOut(vu, vi, sample_candidates(full.matrix, vu, vi, 10, rng)), full.nnz)


def fit(ds, seed=0, name="sasrec", **kw):
    cls = get_model_class(name)
    cfg = TrainConfig(model=name, seed=seed, device="cpu", threads=1, params={**SMALL, **kw})
    cfg.progress = False
    torch.manual_seed(seed)
    m = cls.from_params(ds.n_users, ds.n_items, **cfg.model_params(cls))
    return m.fit(ds, cfg)


def test_registered():
    assert get_model_class("sasrec") is SASRec and SASRec.trainable is False


def test_histories_windows_and_latest():
    # user 0: items 3 (t=5), 1 (t=1), 2 (t=5) -> 1, 2, 3 (ties by item); user 1: 4 then 0; user 2: none
    m = sp.csr_matrix((np.ones(5), ([0, 0, 0, 1, 1], [3, 1, 2, 4, 0])), shape=(3, 5))
    m.sort_indices()
    t = np.array([1, 5, 5, 9, 0])  # aligned with CSR order: (0,1) (0,2) (0,3) (1,0) (1,4)
    items, ptr = ordered_histories(m, t)
    assert items.tolist() == [1, 2, 3, 4, 0] and ptr.tolist() == [0, 3, 5, 5]
    assert latest(items, ptr, 2).tolist() == [[3, 4], [5, 1], [0, 0]]
    rows, users = windows(items, ptr, 2)
    # user 0 (1, 2, 3): targets 2, 3 fit one window [1, 2, 3] (+1); user 1: [5, 1] left-padded
    assert rows.tolist() == [[2, 3, 4], [0, 5, 1]] and users.tolist() == [0, 1]
    long_items, long_ptr = np.arange(6), np.array([0, 6])
    rows, users = windows(long_items, long_ptr, 2)  # 5 targets: windows of 2 from the end, sharing an item
    assert rows.tolist() == [[4, 5, 6], [2, 3, 4], [0, 1, 2]] and users.tolist() == [0, 0, 0]
    assert windows(long_items, long_ptr, 2, "last")[0].tolist() == [[4, 5, 6]]
    padded = pad_histories([torch.tensor([7, 8, 9]), torch.tensor([], dtype=torch.int64), torch.tensor([1])], 2,
                           torch.device("cpu"))
    assert padded.tolist() == [[9, 10], [0, 0], [0, 2]]


def test_no_timestamps_is_refused_unless_index_order_is_asked(toy_dataset):
    toy_dataset.train.timestamps = None
    with pytest.raises(ValueError, match="no timestamps.*order=index"):
        fit(toy_dataset, epochs=1)
    m = fit(toy_dataset, epochs=1, order="index")
    assert m.score_all(torch.tensor([0])).shape == (1, toy_dataset.n_items)


def test_shapes_and_agreement():
    m = model()
    m.seq.copy_(torch.tensor([[0, 0, 0, 0, 0, 1, 2, 3]] * 5))
    assert m.encode(m.seq[:2]).shape == (2, 8, 16)
    full = m.score_all(torch.tensor([0, 3]))
    assert full.shape == (2, 12)
    pairs = m.score(torch.tensor([0, 3]).repeat_interleave(12), torch.arange(12).repeat(2)).view(2, 12)
    assert torch.allclose(full, pairs, atol=1e-5)
    assert m.score(torch.tensor([1]), torch.tensor([4])).shape == (1,)
    assert m.score_histories([torch.tensor([], dtype=torch.int64)]).shape == (1, 12)  # empty: scores exist
    assert torch.isfinite(m.score_histories([torch.tensor([], dtype=torch.int64)])).all()


def test_causal_a_later_item_changes_no_earlier_position():
    m = model(dropout=0.3).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    a = torch.tensor([[0, 0, 3, 5, 7, 2, 9, 4]])
    b = a.clone()
    b[0, 5:] = torch.tensor([11, 1, 6])  # positions 5.. changed
    ha, hb = m.encode(a), m.encode(b)
    assert torch.allclose(ha[:, :5], hb[:, :5], atol=1e-6)
    assert not torch.allclose(ha[:, 5:], hb[:, 5:], atol=1e-3)
    # padding is no input: a shorter padded window holding the same latest items gives the same output
    assert torch.allclose(m.encode(torch.tensor([[0, 0, 0, 0, 0, 3, 5, 7]]))[:, -1],
                          m.encode(torch.tensor([[0, 3, 5, 7]]))[:, -1], atol=1e-5)
    # items beyond max_len are cut: only the latest max_len count
    long = torch.arange(12)
    assert torch.allclose(m.score_histories([long]), m.score_histories([long[-8:]]))


def test_learns_a_planted_successor_rule():
    """Item i is always followed by i + 1: the top-1 next item after training must be the
    successor of the latest item for most users (chance: 1 in 20), on the validation item
    (scored from training) and from arbitrary new histories."""
    ds = successor_dataset()
    blind = dataclasses.replace(ds, valid=None)  # train all epochs (a 10-candidate validation saturates early)
    m = fit(blind, loss="ce")
    top = m.score_all(torch.as_tensor(ds.valid.users)).argmax(1).numpy()
    assert (top == ds.valid.items).mean() > 0.8
    starts = torch.arange(20)
    hist = [torch.tensor([(s + t) % 20 for t in range(5)]) for s in starts.tolist()]
    assert (m.score_histories(hist).argmax(1) == (starts + 5) % 20).float().mean() > 0.8
    m2 = fit(blind, loss="bce", epochs=60)  # the paper's loss: one sampled negative a target
    top = m2.score_all(torch.as_tensor(ds.valid.users)).argmax(1).numpy()
    assert (top == ds.valid.items).mean() > 0.5


def test_best_epoch_is_chosen_on_validation_and_seeded():
    ds = successor_dataset(n_users=40)
    a, b = fit(ds, epochs=6, seed=3), fit(ds, epochs=6, seed=3)
    assert torch.equal(a.item_emb.weight, b.item_emb.weight)
    hist = a.stats["history"]
    best = max(hist, key=lambda r: (r["valid"]["ndcg@10"], -r["epoch"]))
    assert a.stats["best_epoch"] == best["epoch"]
    assert all("test" not in r for r in hist)


def test_score_histories_agrees_with_score_all_for_own_sequence(tmp_path):
    ds = successor_dataset(n_users=30, length=14)
    m = fit(ds, epochs=3)
    items, ptr = ordered_histories(ds.train.matrix, ds.train.timestamps)
    users = torch.arange(ds.n_users)
    hist = [torch.from_numpy(items[ptr[u]: ptr[u + 1]]) for u in range(ds.n_users)]
    assert torch.allclose(m.score_histories(hist), m.score_all(users), atol=1e-5)
    # batch and one-at-a-time agree
    one = torch.cat([m.score_histories([h]) for h in hist[:4]])
    assert torch.allclose(one, m.score_all(users[:4]), atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        m.score_histories([torch.tensor([ds.n_items])])
    with pytest.raises(ValueError, match="outside"):
        m.score_histories([torch.tensor([1, 2]), torch.tensor([-1])])
    assert m.score_histories([]).shape == (0, ds.n_items)


def test_checkpoint_round_trip(tmp_path):
    ds = successor_dataset(n_users=30)
    m = fit(ds, epochs=2)
    save_model(tmp_path, m)
    back = load_model(tmp_path)
    assert type(back) is SASRec and back.hparams() == m.hparams()
    assert torch.equal(back.seq, m.seq)
    users = torch.arange(ds.n_users)
    assert torch.equal(back.score_all(users), m.score_all(users))
    h = [torch.tensor([1, 2, 3])]
    assert torch.equal(back.score_histories(h), m.score_histories(h))


def test_corrupt_stored_sequence_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from ncf.checkpoint import CheckpointError

    m = model()
    save_model(tmp_path, m)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["seq"][0, -1] = 99
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="outside"):
        load_model(tmp_path)


@pytest.mark.parametrize("bad", [{"max_len": 0}, {"dim": 0}, {"dropout": 1.0}, {"loss": "mse"}, {"blocks": 0},
                                 {"heads": 3}, {"windows": "some"}, {"order": "file"}, {"epochs": 0}])
def test_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SASRec.from_params(3, 4, **bad)
    with pytest.raises(ValueError, match="unknown parameter"):
        SASRec.from_params(3, 4, hidden=3)


@pytest.mark.parametrize("name", ["gru4rec"])
def test_other_sequence_models_learn_the_successor_rule_and_round_trip(name, tmp_path):
    ds = successor_dataset()
    m = fit(dataclasses.replace(ds, valid=None), name=name, loss="ce")
    top = m.score_all(torch.as_tensor(ds.valid.users)).argmax(1).numpy()
    assert (top == ds.valid.items).mean() > 0.8
    items, ptr = ordered_histories(ds.train.matrix, ds.train.timestamps)
    hist = [torch.from_numpy(items[ptr[u]: ptr[u + 1]]) for u in range(ds.n_users)]
    users = torch.arange(ds.n_users)
    assert torch.allclose(m.score_histories(hist), m.score_all(users), atol=1e-5)
    save_model(tmp_path, m)
    back = load_model(tmp_path)
    assert type(back) is type(m) and torch.equal(back.score_all(users), m.score_all(users))
    a = torch.tensor([[0, 0, 3, 5, 7, 2, 9, 4]])
    b = a.clone()
    b[0, 6:] = torch.tensor([11, 1])
    assert torch.allclose(back.encode(a)[:, :6], back.encode(b)[:, :6], atol=1e-6)  # causal
