"""WideDeep: the model contract (shapes, score_all vs score, checkpoint round trip), its wide
and deep parts, cold-start scoring from features, and learning on planted structure."""

import numpy as np
import pytest
import torch

from ncf.checkpoint import CheckpointError, load_model, save_model
from ncf.config import TrainConfig
from ncf.data.features import Field
from ncf.models import get_model_class
from ncf.models.widedeep import WideDeep
from ncf.train.trainer import Trainer

USER_FIELDS = [Field("age", "bucket", edges=[18, 30]), Field("job", "cat", ["a", "b", "c"]),
               Field("likes", "multi", ["x", "y"])]
ITEM_FIELDS = [Field("genres", "multi", ["g1", "g2", "g3"]), Field("year", "bucket", edges=[1990])]


def make(n_users=12, n_items=9, **params):
    torch.manual_seed(0)
    m = WideDeep.from_params(n_users, n_items, factors=4, layers=(8, 4), user_fields=USER_FIELDS,
                             item_fields=ITEM_FIELDS, **params)
    g = torch.Generator().manual_seed(1)
    users = [torch.randint(0, f.size, (n_users,), generator=g) if f.kind != "multi"
             else (torch.rand(n_users, f.size, generator=g) < 0.5).float() for f in USER_FIELDS]
    items = [torch.randint(0, f.size, (n_items,), generator=g) if f.kind != "multi"
             else (torch.rand(n_items, f.size, generator=g) < 0.5).float() for f in ITEM_FIELDS]
    m.set_features([u.numpy() for u in users], [i.numpy() for i in items])
    with torch.no_grad():  # make the output depend on every parameter
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return m


def test_registered_and_shapes():
    assert get_model_class("widedeep") is WideDeep
    m = make()
    assert m(torch.tensor([1, 2, 3]), torch.tensor([0, 4, 8])).shape == (3,)
    assert m(torch.tensor([5]), torch.tensor([2])).shape == (1,)
    assert m.score_all(torch.tensor([0, 11])).shape == (2, 9)
    assert m.item_embeddings().shape == (9, 4 * 3)


@pytest.mark.parametrize("chunk", [1 << 23, 40])  # one chunk, and one user a chunk
def test_score_all_agrees_with_score(chunk):
    m = make()
    users = torch.tensor([0, 3, 7, 11])
    full = m.logits_all(users, m.user_features(users), chunk=chunk)
    pairs = m.score(users.repeat_interleave(9), torch.arange(9).repeat(4)).view(4, 9)
    assert torch.allclose(full, pairs, atol=1e-5)


def test_cold_scores_agree_and_ignore_the_user_id():
    m = make()
    users = torch.tensor([2, 5])
    feats = m.user_features(users)
    all_cold = m.score_all_features(feats)
    pairs = m.score_features([f.repeat_interleave(9, dim=0) for f in feats], torch.arange(9).repeat(2)).view(2, 9)
    assert torch.allclose(all_cold, pairs, atol=1e-5)
    # the same features give the same cold scores whoever the user is; warm scores differ
    with torch.no_grad():
        for k, f in enumerate(feats):
            getattr(m, f"ufeat{k}")[5] = f[0]
    assert torch.allclose(m.score_all_features(m.user_features(users))[1], all_cold[0])
    warm = m.score_all(users)
    assert not torch.allclose(warm[0], warm[1])


def test_encode_features_and_errors():
    m = make()
    row = m.encode_features({"age": "25", "job": "b", "likes": "x|y"})
    assert [r.tolist() for r in row] == [[2], [2], [[0.0, 1.0, 1.0]]]
    assert m.score_all_features(row).shape == (1, 9)
    with pytest.raises(ValueError, match=r"unknown feature\(s\) 'color'; valid features: age: .*job: a, b, c"):
        m.encode_features({"color": "red"})
    with pytest.raises(ValueError, match="feature 'job': cannot use 'z'; valid: a, b, c"):
        m.encode_features({"job": "z"})


def test_wide_crosses_are_the_chosen_pairs():
    m = make(crosses="job*genres")
    assert m.hparams()["crosses"] == ["job*genres"]
    assert int(m._cross_mask.sum()) == 4 * 4  # job (4 values with <unk>) x genres (4)
    assert make().hparams()["crosses"] == ["age*genres", "age*year", "job*genres", "job*year",
                                           "likes*genres", "likes*year"]
    assert make(crosses="none").hparams()["crosses"] == []
    with pytest.raises(ValueError, match=r"cross 'job\*color'.*item fields \['genres', 'year'\]"):
        make(crosses="job*color")


def test_wide_cross_weight_changes_exactly_the_matching_pairs():
    m = make(crosses="job*year")
    users, items = torch.arange(12).repeat_interleave(9), torch.arange(9).repeat(12)
    before = m.score(users, items)
    job, year = m.ufeat1[users], m.ifeat1[items]
    with torch.no_grad():  # weight of (job value 2, year bucket 1): columns follow vocab order, end to end
        m.cross_w[4 + 2, 4 + 1] += 1.0
    delta = m.score(users, items) - before
    hit = (job == 2) & (year == 1)
    assert hit.any() and torch.allclose(delta, hit.float(), atol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    m = make()
    save_model(tmp_path, m)
    back = load_model(tmp_path)
    assert back.hparams() == m.hparams()
    u, i = torch.tensor([0, 5, 11]), torch.tensor([8, 1, 3])
    assert torch.equal(m.score(u, i), back.score(u, i))
    assert torch.equal(m.score_all_features(m.encode_features({"job": "c"})),
                       back.score_all_features(back.encode_features({"job": "c"})))


def test_checkpoint_with_other_vocabulary_is_refused(tmp_path):
    save_model(tmp_path, make())
    import json

    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_params"]["user_fields"][1]["vocab"].append("d")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(tmp_path)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="id_dropout"):
        make(id_dropout=1.5)
    with pytest.raises(ValueError, match="unknown parameter"):
        make(colour=1)
    with pytest.raises(ValueError, match="shape"):
        make().set_features([np.zeros(3, np.int64)] * 3, [])


def test_no_fields_is_an_id_only_wide_and_deep():
    torch.manual_seed(0)
    m = WideDeep.from_params(5, 4, factors=4, layers=(8,))
    assert m.score_all(torch.arange(5)).shape == (5, 4)
    assert m.score_all_features([], 2).shape == (2, 4)
    with pytest.raises(ValueError, match="has no user features"):
        m.encode_features({"age": "3"})


def _group_files(tmp_path, n_users=60, n_items=40):
    users = tmp_path / "users.csv"
    users.write_text("id,group\n" + "".join(f"{u},{'ab'[u % 2]}\n" for u in range(n_users)))
    items = tmp_path / "items.csv"
    items.write_text("id,kind\n" + "".join(f"{i},{'xy'[i // 20]}\n" for i in range(n_items)))
    return users, items


def test_learns_planted_groups_and_from_dataset_reports(toy_dataset, tmp_path, own_group_auc):
    users, items = _group_files(tmp_path)
    cfg = TrainConfig(model="widedeep", factors=4, layers=(8, 4), epochs=15, batch_size=64, lr=0.01,
                      patience=0, device="cpu", threads=1,
                      params={"user_features": str(users), "item_features": str(items)})
    torch.manual_seed(0)
    m = WideDeep.from_dataset(toy_dataset, **cfg.model_params(WideDeep))
    assert toy_dataset.report["features"]["users"]["fields"]["group"]["unknown"] == 0
    Trainer(m, toy_dataset, cfg, None, progress=False).fit()
    all_users = np.arange(toy_dataset.n_users)
    assert own_group_auc(m.score_all(torch.as_tensor(all_users)).numpy(), toy_dataset, all_users) > 0.9
