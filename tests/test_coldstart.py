"""Cold start: the user split, popularity scorers, recommending to users never trained on from
their features (library, ``ncf recommend --features``, and the end-to-end benchmark run)."""

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ncf import coldstart
from ncf.cli import main
from ncf.config import TrainConfig
from ncf.data.datasets import DataConfig
from ncf.data.split import HoldOut
from ncf.eval.evaluator import evaluate
from ncf.models.baselines import Popularity
from ncf.train.run import train


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``ncf ARGV``; success may return or exit 0."""
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def _feature_files(tmp_path, n_users=60, n_items=40):
    """Users of group ``a``/``b`` (raw id parity) like items of kind ``x``/``y`` (raw id < 20 or not)."""
    users = tmp_path / "users.csv"
    users.write_text("id,group,noise\n" + "".join(f"{u},{'ab'[u % 2]},{u % 3}\n" for u in range(n_users)))
    items = tmp_path / "items.csv"
    items.write_text("id,kind\n" + "".join(f"{i},{'xy'[i // 20]}\n" for i in range(n_items)))
    return users, items


def _cfg(users, items, **kw):
    base = dict(model="widedeep", factors=4, layers=(8, 4), epochs=12, batch_size=64, lr=0.01, patience=0,
                device="cpu", threads=1, params={"user_features": str(users), "item_features": str(items),
                                                 "id_dropout": 0.3})
    return TrainConfig(**{**base, **kw})


# --- the split --------------------------------------------------------------------------


def test_cold_split_removes_every_interaction_of_the_cold_users(toy_dataset):
    warm, cold = coldstart.cold_split(toy_dataset, 0.2, seed=3)
    cold_users = np.unique(cold.users)
    assert len(cold_users) == 12 and len(cold) == 12
    counts = np.diff(warm.train.matrix.indptr)
    assert (counts[cold_users] == 0).all()
    warm_users = np.setdiff1d(np.arange(toy_dataset.n_users), cold_users)
    assert (warm.train.matrix[warm_users] != toy_dataset.train.matrix[warm_users]).nnz == 0
    assert not np.isin(warm.test.users, cold_users).any() and not np.isin(warm.valid.users, cold_users).any()
    assert len(warm.test) + len(cold) == len(toy_dataset.test)
    assert np.array_equal(cold.candidates, toy_dataset.test.candidates[np.isin(toy_dataset.test.users, cold_users)])
    assert warm.report["cold_start"]["interactions_removed"] == toy_dataset.train.matrix[cold_users].nnz
    again, _ = coldstart.cold_split(toy_dataset, 0.2, seed=3)
    assert (again.train.matrix != warm.train.matrix).nnz == 0  # seeded
    other, cold2 = coldstart.cold_split(toy_dataset, 0.2, seed=4)
    assert not np.array_equal(np.unique(cold2.users), cold_users)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.001, 0.999])
def test_cold_split_refuses_fractions_leaving_no_cold_or_warm_users(toy_dataset, fraction):
    with pytest.raises(ValueError, match="fraction"):
        coldstart.cold_split(toy_dataset, fraction)


# --- popularity scorers -----------------------------------------------------------------


def test_popularity_scorers_by_hand():
    train = sp.csr_matrix(np.array([[1, 1, 0, 0],
                                    [1, 0, 0, 1],
                                    [0, 0, 1, 1],
                                    [0, 0, 0, 0]], dtype=np.float32))  # user 3: cold
    pop = Popularity.from_matrix(train)
    assert pop.score_all(torch.tensor([3])).tolist() == [[2, 1, 1, 2]]
    assert pop.score(torch.tensor([0, 3]), torch.tensor([1, 3])).tolist() == [1, 2]
    seg = coldstart.SegmentPopular(train, [np.array([0, 0, 1, 0])])  # users 0, 1 (and 3) share value 0
    # value 0: warm users 0 and 1 -> items [2, 1, 0, 1] / 4; user 3 scored by value 0's shares
    assert np.allclose(seg.score_all(torch.tensor([3])).numpy(), [[0.5, 0.25, 0.0, 0.25]])
    assert np.allclose(seg.score(torch.tensor([2, 3]), torch.tensor([2, 0])).numpy(), [0.5, 0.5])
    two = coldstart.SegmentPopular(train, [np.array([0, 0, 1, 0]), np.array([2, 1, 1, 2])])
    # second field, value 2 (users 0 and 3): [1, 1, 0, 0] / 2; the mean of both fields
    assert np.allclose(two.score_all(torch.tensor([3])).numpy(), [[0.5, 0.375, 0.0, 0.125]])
    h = HoldOut(np.array([3]), np.array([0]), np.array([[0, 2]]))
    assert evaluate(seg, h, "sampled")["hr@10"] == 1.0


# --- learning to recommend from features ---------------------------------------------------


@pytest.fixture
def cold_run(toy_dataset, tmp_path):
    users, items = _feature_files(tmp_path)
    warm, cold = coldstart.cold_split(toy_dataset, 0.2, seed=0)
    torch.manual_seed(0)
    train(DataConfig(source="toy"), _cfg(users, items), tmp_path / "wd", dataset=warm, progress=False)
    return tmp_path / "wd", warm, cold, (users, items)


def test_cold_users_are_recommended_their_groups_items(cold_run, toy_dataset, own_group_auc):
    from ncf.checkpoint import load_model

    out, warm, cold, _ = cold_run
    model = load_model(out)
    scorer = coldstart.FeatureScorer(model)
    users = np.unique(cold.users)
    assert own_group_auc(scorer.score_all(torch.as_tensor(users)).numpy(), toy_dataset, users) > 0.9
    pop = Popularity.from_matrix(warm.train.matrix)
    assert own_group_auc(pop.score_all(torch.as_tensor(users)).numpy(), toy_dataset, users) < 0.75
    res = coldstart.evaluate_cold([scorer, pop], cold, toy_dataset.seen())
    assert set(res) == {"widedeep (features)", "pop"}
    wd, p = res["widedeep (features)"], res["pop"]
    assert wd["full"]["ndcg@10"] > p["full"]["ndcg@10"] and wd["sampled"]["ndcg@10"] > p["sampled"]["ndcg@10"]
    with pytest.raises(ValueError, match="cannot score users from features"):
        coldstart.FeatureScorer(pop)


def test_recommend_features_cli(cold_run, capsys):
    out = cold_run[0]
    for group, kind in (("a", 0), ("b", 1)):
        rc, stdout, err = run_cli(capsys, "recommend", out, "--features", f"group={group}", "-k", 10, "--json")
        assert rc == 0, err
        r = json.loads(stdout)
        assert r["user"] == {"group": group} and r["fallback"] is False and len(r["items"]) == 10
        assert sum(int(it["item"]) // 20 == kind for it in r["items"]) >= 8
    rc, stdout, _ = run_cli(capsys, "recommend", out, "--features", "group=a,noise=2", "-k", 3)
    assert rc == 0 and "score" in stdout


def test_recommend_features_cli_errors(cold_run, capsys):
    import re

    cases = [
        (["--features", "age=25"], r"unknown feature\(s\) 'age'; valid features: group: a, b; noise: 0, 1, 2"),
        (["--features", "group=c"], "feature 'group': cannot use 'c'; valid: a, b"),
        (["--features", "group"], "NAME=VALUE"),
        ([], "exactly one of --user ID and --features"),
        (["--user", "1", "--features", "group=a"], "exactly one of"),
    ]
    for args, msg in cases:
        rc, _, err = run_cli(capsys, "recommend", cold_run[0], *args)
        assert rc == 2 and re.search(msg, err), (args, err)


def test_recommend_features_needs_a_feature_model(toy_dataset, tmp_path, capsys):
    train(DataConfig(source="toy"), TrainConfig(model="gmf", factors=4, epochs=1, device="cpu", threads=1),
          tmp_path / "gmf", dataset=toy_dataset, progress=False)
    rc, _, err = run_cli(capsys, "recommend", tmp_path / "gmf", "--features", "group=a")
    assert rc == 2 and "does not use user features" in err


def test_prior_blend_ends_are_the_model_and_popularity(toy_dataset):
    pop = Popularity.from_matrix(toy_dataset.train.matrix)

    class Feat(coldstart._Scorer):
        name = "f"
        n_users, n_items = toy_dataset.n_users, toy_dataset.n_items

        def score_all(self, users):
            return torch.arange(self.n_items, dtype=torch.float32).flip(0).expand(len(users), -1)

    users = torch.arange(3)
    one = coldstart.PriorBlend(Feat(), pop, 1.0).score_all(users)
    assert torch.equal(one.argsort(dim=1, stable=True), coldstart._z(torch.log1p(pop.counts)[None]).expand(3, -1)
                       .argsort(dim=1, stable=True))
    zero = coldstart.PriorBlend(Feat(), pop, 0.0).score_all(users)
    assert torch.equal(zero.argmax(dim=1), torch.zeros(3, dtype=torch.int64))
    beta, curve = coldstart.choose_beta(Feat(), pop, toy_dataset.valid, toy_dataset.train.matrix, "full",
                                        grid=np.array([0.0, 0.5, 1.0]))
    assert len(curve) == 3 and beta in (0.0, 0.5, 1.0) and curve[[0.0, 0.5, 1.0].index(beta)] == max(curve)


# --- end to end -------------------------------------------------------------------------


def test_run_writes_results_and_plot(tmp_path):
    """The benchmark's path, on a ratings file with planted groups: widedeep beats most-popular
    on cold users, and the JSON holds both groups of users and every scorer."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(80):
        pool = np.arange(20) + 20 * (u % 2)
        for t, i in enumerate(rng.choice(pool, 12, replace=False)):
            rows.append(f"{u},{i},5,{t}")
    ratings = tmp_path / "plays.csv"
    ratings.write_text("\n".join(rows) + "\n")
    users, items = _feature_files(tmp_path, n_users=80)
    torch.manual_seed(0)
    res = coldstart.run(DataConfig(source=str(ratings), rating_col="2", time_col="3"), _cfg(users, items),
                        tmp_path / "run", fraction=0.25, seed=0, progress=False)
    saved = json.loads((tmp_path / "run" / "coldstart.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert (tmp_path / "run" / "coldstart.png").stat().st_size > 0
    assert res["cold_users"] == 20 and res["warm_test_users"] == 60
    assert set(res["cold"]) == {"widedeep (features)", "pop", "segment-pop", "widedeep (features) + pop prior"}
    assert set(res["warm"]) == {"widedeep", "pop"}
    assert set(res["prior_blend"]) == {"chosen_on", "sampled", "full"}
    assert all(0 <= res["prior_blend"][p]["beta"] <= 1 for p in ("sampled", "full"))
    cold = res["cold"]
    assert cold["widedeep (features)"]["full"]["ndcg@10"] > cold["pop"]["full"]["ndcg@10"]
    assert len(json.loads((tmp_path / "run" / "cold_users.json").read_text())) == 20


def test_train_cli_takes_feature_files(tmp_path, capsys):
    ratings = tmp_path / "plays.csv"
    ratings.write_text("".join(f"{u},{(u % 2) * 20 + (u * 7 + j) % 20}\n" for u in range(30) for j in range(6)))
    users, items = _feature_files(tmp_path, n_users=30)
    rc, _, err = run_cli(capsys, "train", "--dataset", ratings, "--model", "widedeep", "--epochs", 1, "--factors", 4,
                         "--layers", "8,4", "--threads", 1, "--user-features", users, "--item-features", items,
                         "--out", tmp_path / "run", "--quiet")
    assert rc == 0, err
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [f["name"] for f in cfg["model_params"]["user_fields"]] == ["group", "noise"]
    assert cfg["dataset_report"]["features"]["items"]["fields"]["kind"]["unknown"] == 0
    rc, _, err = run_cli(capsys, "train", "--dataset", ratings, "--model", "widedeep", "--epochs", 1,
                         "--user-features", tmp_path / "nope.csv", "--out", tmp_path / "run2", "--quiet")
    assert rc == 2 and "nope.csv: feature file not found" in err
