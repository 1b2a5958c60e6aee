"""item2vec: histories, profiles, planted structure, determinism, checkpoints, min_count,
warm starts of GMF / NeuMF, and a loosely bounded real-data run."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

pytest.importorskip("gensim")

from ncf.checkpoint import load_model, save_model  # noqa: E402
from ncf.config import TrainConfig  # noqa: E402
from ncf.data.interactions import IdMap  # noqa: E402
from ncf.eval.evaluator import evaluate  # noqa: E402
from ncf.models import get_model_class  # noqa: E402
from ncf.models.gmf import GMF  # noqa: E402
from ncf.models.item2vec import NO_VECTOR, Item2Vec, _Sentences, histories, recent_weights  # noqa: E402
from ncf.models.mlp import MLP  # noqa: E402
from ncf.models.neumf import NeuMF  # noqa: E402
from ncf.train.warmstart import init_item_embeddings  # noqa: E402

SMALL = {"vector_size": 8, "epochs": 30, "window": 0, "min_count": 1, "sample": 0.0}


def fit(dataset, seed=0, **params):
    cfg = TrainConfig(model="item2vec", seed=seed, params={**SMALL, **params})
    m = Item2Vec.from_params(dataset.n_users, dataset.n_items, **cfg.model_params(Item2Vec))
    m.fit(dataset, cfg)
    return m


def group_auc(model, dataset) -> float:
    """Mean over users of P(own-group item outscores other-group item) (toy: group = raw id // 20)."""
    scores = model.score_all(torch.arange(dataset.n_users)).numpy()
    group_of_item = np.array(dataset.train.item_map.raw_ids) // 20
    aucs = []
    for u in range(dataset.n_users):
        g = int(dataset.train.user_map.raw(u)) % 2
        own, other = scores[u, group_of_item == g], scores[u, group_of_item != g]
        aucs.append((own[:, None] > other[None, :]).mean())
    return float(np.mean(aucs))


def test_registered():
    assert get_model_class("item2vec") is Item2Vec
    assert Item2Vec.trainable is False


def test_histories_are_ordered_by_time_then_item():
    # user 0: items 0 (t=5), 1 (t=1), 2 (t=5) -> 1, 0, 2; user 1: items 1 (t=0), 2 (t=9)
    m = sp.csr_matrix((np.ones(5), ([0, 0, 0, 1, 1], [0, 1, 2, 1, 2])), shape=(2, 3))
    times = np.array([5, 1, 5, 0, 9])
    h = histories(m, times)
    assert h[0].tolist() == [1, 0, 2] and h[1].tolist() == [1, 2]
    assert [x.tolist() for x in histories(m, None)] == [[0, 1, 2], [1, 2]]


def test_recent_weights_keep_latest_items():
    m = sp.csr_matrix((np.ones(5), ([0, 0, 0, 1, 1], [0, 1, 2, 1, 2])), shape=(2, 3))
    times = np.array([5, 1, 7, 0, 9])
    w = recent_weights(m, times, 2).toarray()
    assert w.tolist() == [[1, 0, 1], [0, 1, 1]]
    assert recent_weights(m, times, 1).toarray().tolist() == [[0, 0, 1], [0, 0, 1]]
    assert recent_weights(m, times, 0).toarray().tolist() == [[1, 1, 1], [0, 1, 1]]
    assert recent_weights(m, None, 1).toarray().tolist() == [[1, 1, 1], [0, 1, 1]]  # no times: all


def test_baskets_are_reshuffled_each_pass_reproducibly():
    h = [np.arange(30), np.arange(5)]
    a, b = _Sentences(h, shuffle=True, seed=3), _Sentences(h, shuffle=True, seed=3)
    first, second = list(a), list(a)
    assert first != second  # a new permutation on every pass
    assert list(b) == first and list(b) == second  # same seed, same sequence of passes
    assert sorted(first[0], key=int) == [str(i) for i in range(30)]
    assert list(_Sentences(h, shuffle=False, seed=0))[0] == [str(i) for i in range(30)]


def test_learns_planted_groups(toy_dataset):
    m = fit(toy_dataset)
    assert group_auc(m, toy_dataset) > 0.9
    # nearest neighbours by cosine stay in their group
    unit = torch.nn.functional.normalize(m.item_embeddings(), dim=1)
    sims = unit @ unit.T
    sims.fill_diagonal_(-2)
    group = torch.as_tensor(np.array(toy_dataset.train.item_map.raw_ids) // 20)
    assert (group[sims.argmax(1)] == group).float().mean() > 0.9


def test_learns_planted_groups_from_unordered_baskets(toy_dataset):
    toy_dataset.train.timestamps = None  # as ncf-ml-1m: no time, the history is a basket
    m = fit(toy_dataset)
    assert group_auc(m, toy_dataset) > 0.9


def test_seeded_fit_is_reproducible(toy_dataset):
    a, b, c = fit(toy_dataset, seed=1), fit(toy_dataset, seed=1), fit(toy_dataset, seed=2)
    assert torch.equal(a.vectors, b.vectors) and torch.equal(a.profiles, b.profiles)
    assert not torch.equal(a.vectors, c.vectors)


def test_scores_are_cosines_and_agree(toy_dataset):
    m = fit(toy_dataset, epochs=5, recent=0)  # the profile: every training item
    users = torch.tensor([0, 7, 33])
    full = m.score_all(users)
    assert full.shape == (3, toy_dataset.n_items)
    pairs = m.score(users.repeat_interleave(m.n_items), torch.arange(m.n_items).repeat(3)).view(3, -1)
    assert torch.allclose(full, pairs, atol=1e-6)
    assert full.max() <= 1 + 1e-5 and full.min() >= -1 - 1e-5
    assert m.score(torch.tensor([2]), torch.tensor([4])).shape == (1,)
    # the profile is the normalised mean of the unit vectors of the user's items
    unit = torch.nn.functional.normalize(m.vectors, dim=1)
    items = toy_dataset.train.matrix[7].indices
    prof = torch.nn.functional.normalize(unit[items].mean(0), dim=0)
    assert torch.allclose(full[1], unit @ prof, atol=1e-5)


def test_items_below_min_count_have_no_vector(toy_dataset):
    counts = np.bincount(toy_dataset.train.matrix.indices, minlength=toy_dataset.n_items)
    threshold = int(np.sort(counts)[5]) + 1  # at least the 6 rarest items fall below it
    m = fit(toy_dataset, epochs=2, min_count=threshold)
    expect = counts >= threshold
    assert m.has_vector.numpy().tolist() == expect.tolist()
    assert 0 < (~expect).sum() < len(expect)
    missing = torch.as_tensor(np.flatnonzero(~expect))
    assert torch.all(m.vectors[missing] == 0)
    s = m.score_all(torch.tensor([0, 1]))
    assert torch.all(s[:, missing] == NO_VECTOR) and torch.all(s[:, ~torch.as_tensor(expect)] < -1)


def test_min_count_above_every_item_is_a_clear_error(toy_dataset):
    with pytest.raises(ValueError, match="min_count"):
        fit(toy_dataset, min_count=10_000)


@pytest.mark.parametrize("bad", [{"vector_size": 0}, {"window": -1}, {"negative": 0}, {"epochs": 0},
                                 {"ns_exponent": 5.0}, {"recent": -2}])
def test_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Item2Vec.from_params(3, 4, **bad)
    with pytest.raises(ValueError, match="unknown parameter"):
        Item2Vec.from_params(3, 4, windw=3)


def test_checkpoint_round_trip(toy_dataset, tmp_path):
    m = fit(toy_dataset, epochs=3, recent=4)
    save_model(tmp_path, m)
    back = load_model(tmp_path)
    assert isinstance(back, Item2Vec) and back.hparams() == m.hparams()
    assert torch.equal(back.vectors, m.vectors) and torch.equal(back.has_vector, m.has_vector)
    u = torch.arange(toy_dataset.n_users)
    assert torch.equal(back.score_all(u), m.score_all(u))


# -- warm starts ---------------------------------------------------------------------------

def _source_run(tmp_path, raw_items, vectors):
    """A saved item2vec run with the given raw item ids and vectors (zero rows: no vector)."""
    from ncf.data.interactions import save_idmaps

    m = Item2Vec.from_params(2, len(raw_items), vector_size=vectors.shape[1])
    m.vectors.copy_(torch.as_tensor(vectors, dtype=torch.float32))
    m.has_vector.copy_(torch.as_tensor(np.abs(vectors).sum(1) > 0))
    save_model(tmp_path, m)
    save_idmaps(tmp_path, IdMap([10, 11]), IdMap(raw_items))
    return tmp_path


def test_warm_start_gmf_maps_by_raw_id(tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(4, 8)).astype(np.float32)
    vecs[2] = 0  # raw item "c": below min_count in the source
    src = _source_run(tmp_path, ["a", "b", "c", "d"], vecs)
    target_items = IdMap(["d", "x", "a", "c"])  # other order; "x" unknown there; "c" has no vector
    torch.manual_seed(0)
    gmf = GMF(3, 4, factors=8)
    before = gmf.item_emb.weight.detach().clone()
    rep = init_item_embeddings(gmf, target_items, src)
    w = gmf.item_emb.weight.detach()
    cos = torch.nn.functional.cosine_similarity
    assert cos(w[0], torch.as_tensor(vecs[3]), dim=0) > 0.9999  # "d"
    assert cos(w[2], torch.as_tensor(vecs[0]), dim=0) > 0.9999  # "a"
    assert torch.equal(w[1], before[1]) and torch.equal(w[3], before[3])  # random init kept
    assert rep["initialised"] == 2 and rep["random"] == 2
    assert rep["not_in_source"] == 1 and rep["no_vector_in_source"] == 1 and rep["tables"] == ["item_emb"]
    assert torch.equal(w[0], torch.as_tensor(vecs[3])) and rep["scale"] == {"item_emb": 1.0}  # as they are
    torch.manual_seed(0)
    small = GMF(3, 4, factors=8)
    init_item_embeddings(small, target_items, src, rescale=True)  # to the size of the random init
    assert torch.allclose(small.item_emb.weight[[0, 2]].norm(dim=1).mean(), before.norm(dim=1).mean(), rtol=1e-4)


def test_warm_start_neumf_fills_the_tables_of_matching_width(tmp_path):
    vecs = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    src = _source_run(tmp_path, [1, 2, 3], vecs)
    nm = NeuMF(2, 3, factors=8, layers=(32, 16, 8))
    mlp_before = nm.mlp.tower.item_emb.weight.detach().clone()
    rep = init_item_embeddings(nm, IdMap([1, 2, 3]), src)
    assert rep["tables"] == ["gmf.item_emb"]
    assert torch.equal(nm.mlp.tower.item_emb.weight, mlp_before)
    both = NeuMF(2, 3, factors=8, layers=(16, 8))
    assert init_item_embeddings(both, IdMap([1, 2, 3]), src)["tables"] == ["gmf.item_emb", "mlp.item_emb"]


def test_warm_start_errors(tmp_path):
    vecs = np.ones((3, 8), np.float32)
    src = _source_run(tmp_path, [1, 2, 3], vecs)
    with pytest.raises(ValueError, match=r"8 dimensions.*item_emb 16"):
        init_item_embeddings(GMF(2, 3, factors=16), IdMap([1, 2, 3]), src)
    with pytest.raises(ValueError, match="none of this dataset's 3 items"):
        init_item_embeddings(GMF(2, 3, factors=8), IdMap([7, 8, 9]), src)
    with pytest.raises(ValueError, match="gmf and neumf"):
        init_item_embeddings(MLP(2, 3, layers=(16, 8)), IdMap([1, 2, 3]), src)
    from ncf.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no such run directory"):
        init_item_embeddings(GMF(2, 3, factors=8), IdMap([1, 2, 3]), tmp_path / "nope")


def test_train_with_init_items_reports_and_records(toy_dataset, tmp_path):
    from ncf.data.datasets import DataConfig
    from ncf.train.run import train

    dcfg = DataConfig(source="toy")
    train(dcfg, TrainConfig(model="item2vec", params={**SMALL, "epochs": 5}), tmp_path / "i2v", dataset=toy_dataset,
          progress=False)
    s = train(dcfg, TrainConfig(model="gmf", factors=8, epochs=2, patience=0, device="cpu"), tmp_path / "gmf",
              dataset=toy_dataset, progress=False, init_items=tmp_path / "i2v")
    assert s["init_items"]["initialised"] == toy_dataset.n_items
    assert (tmp_path / "gmf" / "init_items.json").exists()
    with pytest.raises(ValueError, match="pretrain"):
        train(dcfg, TrainConfig(model="neumf", pretrain=True), tmp_path / "x", dataset=toy_dataset,
              progress=False, init_items=tmp_path / "i2v")


# -- real data -----------------------------------------------------------------------------

def test_ml100k_beats_popularity_on_validation(ml100k):
    """A small, fast setting must rank the validation item well above chance (0.10) and above
    most-popular (computed here, not hard-coded)."""
    m = fit(ml100k, vector_size=32, window=10, epochs=3, recent=3)
    res = evaluate(m, ml100k.valid, "sampled")
    pop = np.bincount(ml100k.train.matrix.indices, minlength=ml100k.n_items).astype(np.float32)

    class Pop:
        n_users, n_items = ml100k.n_users, ml100k.n_items

        def score(self, users, items):
            return torch.as_tensor(pop)[items]

    pop_res = evaluate(Pop(), ml100k.valid, "sampled")
    assert res["hr@10"] > pop_res["hr@10"] + 0.03, (res, pop_res)
