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
    assert (res["cold_users"], res["cold_valid_users"], res["warm_users"]) == (20, 20, 60)
    assert set(res["cold"]) == {"pop", "segment-pop", "segment-prior (10-fold CV)", "segment-prior (cold valid users)",
                                "pop (train of widedeep)", "widedeep (features)", "widedeep (features) + pop prior"}
    assert set(res["warm"]) == {"widedeep", "pop"}
    assert res["user_fields"] == ["group", "noise"]
    blend = res["choices"]["prior_blend"]
    assert all(0 <= blend[p]["beta"] <= 1 for p in ("sampled", "full"))
    cv = res["choices"]["segment-prior (10-fold CV)"]
    assert cv["full"]["chosen_on"] == "10-fold CV over users" and cv["full"]["protocol"] == "full"
    cold = res["cold"]
    assert cold["widedeep (features)"]["full"]["ndcg@10"] > cold["pop"]["full"]["ndcg@10"]
    assert cold["segment-prior (10-fold CV)"]["full"]["ndcg@10"] > cold["pop"]["full"]["ndcg@10"]
    assert len(json.loads((tmp_path / "run" / "cold_users.json").read_text())) == 20
    # the run directory is the widedeep run, trained on the warm users only, with the prior's choice
    from ncf.recommend import Recommender

    rec = Recommender.from_run(tmp_path / "run")
    assert rec.seen.nnz == 40 * 10 and rec.cold_prior().mode == cv["full"]["mode"]
    assert json.loads((tmp_path / "run" / "cold_prior.json").read_text())["alpha"] == cv["full"]["alpha"]


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


# --- the segment prior (issue 17) -----------------------------------------------------------


def _planted_segments(n_users=600, n_items=70, per_user=15, seed=0):
    """Everyone likes blockbusters (items 0-9, 30% of each user's picks); the rest of a user's
    picks come from their group's 30 items (group = user % 2). Returns (dataset, [group codes,
    noise codes] by user index); each user's test item is their latest pick."""
    from ncf.data.interactions import Interactions
    from ncf.data.split import Dataset, leave_one_out, sample_candidates

    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    for u in range(n_users):
        weights = np.zeros(n_items)
        weights[:10] = 0.3 / 10
        weights[10 + 30 * (u % 2): 40 + 30 * (u % 2)] = 0.7 / 30
        chosen = rng.choice(n_items, size=per_user, replace=False, p=weights)
        users += [u] * per_user
        items += chosen.tolist()
        times += rng.permutation(per_user).tolist()
    full = Interactions.from_raw(np.array(users), np.array(items), np.array(times))
    train, tu, ti, _ = leave_one_out(full, rng)
    train, vu, vi, _ = leave_one_out(train, rng)
    data = Dataset("planted", train, HoldOut(tu, ti, sample_candidates(full.matrix, tu, ti, 20, rng)),
                   HoldOut(vu, vi, sample_candidates(full.matrix, vu, vi, 20, rng)), full.nnz)
    raw = np.asarray(train.user_map.raws(range(n_users)))
    return data, [raw % 2 + 1, raw % 3 + 1]  # codes as a Field makes them (0 = <unk>)


def test_segment_prior_by_hand():
    train = sp.csr_matrix(np.array([[1, 1, 0, 0],
                                    [1, 0, 0, 1],
                                    [0, 0, 1, 1],
                                    [0, 0, 0, 0]], dtype=np.float32))  # user 3: cold
    code = np.array([1, 1, 2, 1])
    counts, total = np.array([2, 1, 1, 2]), 6.0
    p = (counts + 0.5) / (total + 0.5 * 4)
    # value 1 (users 0, 1): counts [2, 1, 0, 1] over 4; 2 values hold interactions -> m = alpha * 6 / 2
    for alpha in (0.0, 0.5, 4.0):
        m = alpha * 3
        with np.errstate(divide="ignore"):  # alpha 0: an item the segment never took is -inf
            value1 = np.log((np.array([2, 1, 0, 1]) + m * p) / (4 + m))
        prior = coldstart.SegmentPrior(train, [code], alpha, "naive-bayes")
        got = prior.score_all(torch.tensor([3])).numpy()[0]
        assert np.allclose(got, value1, atol=1e-6), alpha  # one field: log p + (log P(i|v) - log p)
        joint = coldstart.SegmentPrior(train, [code], alpha, "joint").score_all(torch.tensor([3])).numpy()[0]
        assert np.allclose(joint, value1, atol=1e-6)
    # two fields, naive Bayes: log p + both fields' log-odds
    other = np.array([1, 2, 2, 2])  # value 2: users 1 and 2 -> counts [1, 0, 1, 2] over 4
    nb = coldstart.SegmentPrior(train, [code, other], 1.0, "naive-bayes")
    m = 1.0 * 6 / 2
    expect = np.log(p) + (np.log((np.array([2, 1, 0, 1]) + m * p) / (4 + m)) - np.log(p)) \
        + (np.log((np.array([1, 0, 1, 2]) + m * p) / (4 + m)) - np.log(p))
    assert np.allclose(nb.score_codes([np.array([1]), np.array([2])])[0], expect)
    # joint: (1, 2) is user 1 alone; a combination (or value) no warm user has scores as popularity
    jt = coldstart.SegmentPrior(train, [code, other], 1.0, "joint")
    m = 1.0 * 6 / 3  # three combinations hold interactions
    assert np.allclose(jt.score_codes([np.array([1]), np.array([2])])[0],
                       np.log((np.array([1, 0, 0, 1]) + m * p) / (2 + m)))
    assert np.allclose(jt.score_codes([np.array([2]), np.array([1])])[0], np.log(p))
    assert np.allclose(nb.score_codes([np.array([0]), np.array([7])])[0], np.log(p))  # <unk>, out of vocabulary
    with pytest.raises(ValueError, match="mode must be one of"):
        coldstart.SegmentPrior(train, [code], 1.0, "mean")
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        coldstart.SegmentPrior(train, [code], -1.0)


def test_segment_prior_at_alpha_inf_ranks_as_most_popular():
    from ncf.eval.evaluator import full_ranks, sampled_ranks

    data, codes = _planted_segments(n_users=200)
    pop = Popularity.from_matrix(data.train.matrix)
    seen = data.seen()
    for mode in coldstart.SegmentPrior.MODES:
        inf = coldstart.SegmentPrior(data.train.matrix, codes, float("inf"), mode)
        assert np.array_equal(full_ranks(inf, data.test, seen), full_ranks(pop, data.test, seen))
        assert np.array_equal(sampled_ranks(inf, data.test), sampled_ranks(pop, data.test))
        finite = coldstart.SegmentPrior(data.train.matrix, codes, 1.0, mode)
        assert not np.array_equal(full_ranks(finite, data.test, seen), full_ranks(pop, data.test, seen))


def test_segment_prior_beats_popularity_where_segments_carry_signal():
    data, codes = _planted_segments()
    warm, cold = coldstart.cold_split(data, 0.2, seed=0)
    seen = data.seen()
    pop = Popularity.from_matrix(warm.train.matrix)
    for protocol in ("sampled", "full"):
        choice = coldstart.choose_prior(warm.train.matrix, codes, warm.test, seen, protocol, folds=5)
        assert np.isfinite(choice["alpha"]) and choice["value"] > choice["curve"][choice["mode"]][-1]
        prior = coldstart.SegmentPrior(warm.train.matrix, codes, choice["alpha"], choice["mode"])
        got, base = evaluate(prior, cold, protocol, seen=seen), evaluate(pop, cold, protocol, seen=seen)
        assert got["hr@10"] > base["hr@10"] + 0.08 and got["ndcg@10"] > base["ndcg@10"] + 0.025, (protocol, got, base)


def test_choose_prior_never_scores_a_user_with_their_own_interactions():
    """Each user their own segment: fitted without the user's fold, their segment is empty, so
    alpha = 0 scores as popularity; counted with their own items it would not."""
    data, _ = _planted_segments(n_users=200)
    own = [np.arange(data.n_users) + 1]
    half = data.test.users < data.n_users // 2
    valid = HoldOut(data.test.users[half], data.test.items[half], data.test.candidates[half])
    apart = sp.csr_matrix(sp.diags((~np.isin(np.arange(data.n_users), valid.users)).astype(float))
                          @ data.train.matrix)  # a separate set of validation users, absent from training
    for matrix, folds in ((data.train.matrix, 5), (apart, None)):
        r = coldstart.choose_prior(matrix, own, valid, data.seen(), "full", alphas=(0.0, float("inf")),
                                   modes=("joint", "naive-bayes"), folds=folds)
        assert r["curve"]["joint"][0] == r["curve"]["joint"][1] > 0.1
        assert r["curve"]["naive-bayes"] == r["curve"]["joint"]
    leaked = coldstart.SegmentPrior(data.train.matrix, own, 0.0, "joint")
    assert evaluate(leaked, valid, "full", seen=data.seen())["ndcg@10"] < r["curve"]["joint"][1] / 2
    with pytest.raises(ValueError, match="folds must be in"):
        coldstart.choose_prior(data.train.matrix, own, data.test, data.seen(), folds=1)


def test_recommend_features_uses_the_segment_prior(cold_run, capsys):
    from ncf.checkpoint import CheckpointError
    from ncf.recommend import Recommender, top_k

    out = cold_run[0]
    rec = Recommender.from_run(out)
    prior = rec.cold_prior()
    assert prior.field_names == ["group", "noise"] and (prior.mode, prior.alpha) == ("naive-bayes", 1.0)
    group = [f for f in rec.model.user_fields if f.name == "group"][0]
    r = rec.recommend_features({"group": "b"}, 10)
    codes = [np.array([group.vocab.index("b")]), np.array([0])]
    want = top_k(prior.score_codes(codes)[0], None, 10)
    assert [it["item"] for it in r.items] == rec.item_map.raws(want)
    assert sum(int(it["item"]) // 20 == 1 for it in r.items) >= 8
    # the run's cold_prior.json (as the benchmark writes it): alpha inf is most-popular
    (out / "cold_prior.json").write_text(json.dumps({"mode": "joint", "alpha": "inf"}))
    rec = Recommender.from_run(out)
    assert [it["item"] for it in rec.recommend_features({"group": "b"}, 5).items] == \
        [it["item"] for it in rec.popular(5)]
    (out / "cold_prior.json").write_text(json.dumps({"mode": "mean"}))
    with pytest.raises(CheckpointError, match="mode must be one of"):
        Recommender.from_run(out)
    (out / "cold_prior.json").unlink()


# --- recency: weighted counts (issue 17) ------------------------------------------------------


def _old_and_recent():
    """Item 0: three users long ago (t = 0); item 1: two users lately (t = 100); user 3 is cold."""
    from ncf.data.interactions import Interactions

    return Interactions.from_raw(np.array([0, 1, 2, 0, 1, 3]), np.array([0, 0, 0, 1, 1, 2]),
                                 np.array([0, 0, 0, 100, 100, 100]))


def test_recency_weights_favour_recent_items():
    data = _old_and_recent()
    train = sp.csr_matrix(sp.diags([1.0, 1.0, 1.0, 0.0]) @ data.matrix)  # user 3 held out (item 2 stays)
    train.eliminate_zeros()
    cold = torch.tensor([3])
    unweighted = coldstart.SegmentPrior(train, [], float("inf")).score_all(cold).numpy()[0]
    assert unweighted[0] > unweighted[1]  # all-time: item 0 (3 users) over item 1 (2 users)
    w = coldstart.recency_weights(data, 10.0)
    assert np.allclose(w[0, 0], 2.0 ** -10) and w[0, 1] == 1.0  # 100 time units = 10 half-lives
    recent = coldstart.SegmentPrior(train, [], float("inf"), weights=w).score_all(cold).numpy()[0]
    assert recent[1] > recent[0]  # recent: item 1 first
    counts = np.array([3 * 2.0 ** -10, 2.0, 0.0])  # user 3's row is not in train: no weight counted
    assert np.allclose(recent, np.log((counts + 0.5) / (counts.sum() + 0.5 * 3)))
    slow = coldstart.SegmentPrior(train, [], float("inf"), weights=coldstart.recency_weights(data, 1e9))
    assert slow.score_all(cold).numpy()[0].argmax() == 0  # a half-life far beyond the data: all-time again
    assert coldstart.recency_weights(data, None) is None


def test_weighted_segment_prior_by_hand():
    """The segment prior with weights is the same formula over weighted counts; weights=None and
    all-ones weights rank exactly as before."""
    train = sp.csr_matrix(np.array([[1, 1, 0, 0],
                                    [1, 0, 0, 1],
                                    [0, 0, 1, 1],
                                    [0, 0, 0, 0]], dtype=np.float32))
    code = np.array([1, 1, 2, 1])
    weights = sp.csr_matrix(np.array([[1, 4, 0, 0],
                                      [1, 0, 0, 4],
                                      [0, 0, 1, 1],
                                      [9, 9, 9, 9]], dtype=np.float64))  # row 3: no interactions, ignored
    counts = np.array([2.0, 4, 1, 5])
    p = (counts + 0.5) / (counts.sum() + 0.5 * 4)
    m = 1.0 * counts.sum() / 2  # alpha 1, two values hold interactions
    value1 = np.log((np.array([2, 4, 0, 4]) + m * p) / (10 + m))
    got = coldstart.SegmentPrior(train, [code], 1.0, "naive-bayes", weights=weights)
    assert np.allclose(got.score_all(torch.tensor([3])).numpy()[0], value1)
    plain = coldstart.SegmentPrior(train, [code], 1.0, "naive-bayes").score_all(torch.arange(4)).numpy()
    assert not np.allclose(got.score_all(torch.arange(4)).numpy(), plain)  # the weights are used
    data, codes = _planted_segments(n_users=200)
    ones = data.train.matrix.copy()
    ones.data[:] = 1.0
    for mode in coldstart.SegmentPrior.MODES:
        base = coldstart.SegmentPrior(data.train.matrix, codes, 1.0, mode).score_all(torch.arange(200)).numpy()
        none = coldstart.SegmentPrior(data.train.matrix, codes, 1.0, mode, weights=None)
        assert np.array_equal(none.score_all(torch.arange(200)).numpy(), base)
        same = coldstart.SegmentPrior(data.train.matrix, codes, 1.0, mode, weights=ones)
        assert np.array_equal(same.score_all(torch.arange(200)).numpy(), base)


def test_recency_and_weights_errors_name_the_bad_value():
    from ncf.errors import ConfigError, DataError

    data = _old_and_recent()
    for bad in (0, -5.0, float("nan"), float("inf"), "7", True):
        with pytest.raises(ConfigError, match=f"half-life must be a positive finite number.*got {bad!r}"):
            coldstart.recency_weights(data, bad)
    untimed = data.__class__(data.matrix, data.user_map, data.item_map)
    with pytest.raises(DataError, match="need timestamps"):
        coldstart.recency_weights(untimed, 30.0)
    neg = data.matrix.astype(np.float64)
    neg[1, 0] = -2.0
    with pytest.raises(ConfigError, match=r"finite and >= 0: 1 are not, e\.g\. -2\.0 \(user index 1, item index 0\)"):
        coldstart.SegmentPrior(data.matrix, [], 1.0, weights=neg)
    with pytest.raises(ConfigError, match=r"weights have shape \(2, 3\), the training matrix \(4, 3\)"):
        coldstart.SegmentPrior(data.matrix, [], 1.0, weights=sp.csr_matrix((2, 3)))
    with pytest.raises(ConfigError, match="must be a scipy sparse matrix, got ndarray"):
        coldstart.SegmentPrior(data.matrix, [], 1.0, weights=np.ones((4, 3)))
    latest = HoldOut(np.array([2]), np.array([1]), np.array([[1]]))
    with pytest.raises(ConfigError, match="latest rows must be a finite number >= 0, got -1"):
        coldstart.latest_weighted(data.matrix, latest, -1)
    with pytest.raises(DataError, match="a latest row is also a training row"):
        coldstart.latest_weighted(data.matrix, HoldOut(np.array([0]), np.array([0]), np.array([[0]])), 1.0)


def _drifting(n_users=300, n_items=30, per_user=12, seed=0):
    """Popularity drifts: an event at time T in [0, 1) (x 10^7 s) is from the 'new' items 25-29
    with probability T^3, else from the 'old' items 0-24, so old items dominate all-time counts
    while users' latest items are mostly new. Returns ratings CSV rows (user, item, 5, time)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        times = np.sort(rng.random(per_user))
        taken: set[int] = set()
        for t in times:
            pool = np.arange(25, 30) if rng.random() < t ** 3 else np.arange(25)
            pool = np.array([i for i in pool if i not in taken] or [i for i in range(n_items) if i not in taken])
            item = int(rng.choice(pool, p=np.linspace(2, 1, len(pool)) / np.linspace(2, 1, len(pool)).sum()))
            taken.add(item)
            rows.append(f"{u},{item},5,{int(t * 1e7)}")
    return rows


def test_latest_weighted_counts_the_latest_rows():
    data, _ = _planted_segments(n_users=100)
    corpus, w0 = coldstart.latest_weighted(data.train.matrix, data.test, 0.0)
    assert corpus.nnz == data.train.nnz + len(data.test)
    cold = torch.tensor([0])
    base = coldstart.SegmentPrior(data.train.matrix, [], float("inf")).score_all(cold)
    assert torch.equal(coldstart.SegmentPrior(corpus, [], float("inf"), weights=w0).score_all(cold), base)
    _, heavy = coldstart.latest_weighted(data.train.matrix, data.test, 1e6)
    got = coldstart.SegmentPrior(corpus, [], float("inf"), weights=heavy).score_all(cold).numpy()[0]
    latest_counts = np.bincount(data.test.items, minlength=data.n_items)
    assert latest_counts[got.argmax()] == latest_counts.max()  # ranked by the latest rows first


def test_run_with_recency_beats_popularity_where_popularity_drifts(tmp_path):
    """Counts only: with the half-life chosen on validation, recent-pop beats all-time pop on
    cold users whose latest items follow the drift; the cold test users' rows are never counted."""
    ratings = tmp_path / "plays.csv"
    ratings.write_text("\n".join(_drifting()) + "\n")
    res = coldstart.run(DataConfig(source=str(ratings), rating_col="2", time_col="3"), None, tmp_path / "cs",
                        fraction=0.2, seed=0, progress=False, recency=True, folds=5)
    cold = res["cold"]
    assert {"recent-pop (5-fold CV)", "recent-pop (cold valid users)"} <= set(cold)
    for protocol in ("sampled", "full"):
        choice = res["choices"]["recent-pop (5-fold CV)"][protocol]
        assert choice["weighting"] != "unweighted" and set(choice["by_weighting"]) == {
            "unweighted", *(f"half-life {h:g} d" for h in coldstart.HALF_LIVES_DAYS)}
        assert cold["recent-pop (5-fold CV)"][protocol]["hr@10"] > cold["pop"][protocol]["hr@10"] + 0.05, protocol


def test_choose_weighting_never_counts_the_held_out_users():
    """Each user's own latest row counted hugely would make recent-pop a perfect oracle for them;
    held out by folds it cannot, so the weighting's score stays that of popularity."""
    data, codes = _planted_segments(n_users=200)
    corpus, _ = coldstart.latest_weighted(data.train.matrix, data.test, 0.0)
    ws = {"none": coldstart.latest_weighted(data.train.matrix, data.test, 0.0)[1],
          "huge": coldstart.latest_weighted(data.train.matrix, data.test, 1e9)[1]}
    got = coldstart.choose_weighting(corpus, ws, data.test, data.seen(), "full", folds=5)
    leaked = coldstart.SegmentPrior(corpus, [], float("inf"), weights=ws["huge"])
    assert got["by_weighting"]["huge"] < evaluate(leaked, data.test, "full", seen=data.seen())["ndcg@10"]
    joint = coldstart.choose_weighting(corpus, ws, data.test, data.seen(), "full", folds=5, user_codes=codes,
                                       alphas=(1.0, float("inf")))
    assert joint["weighting"] in ws and joint["mode"] in coldstart.SegmentPrior.MODES
    assert joint["value"] >= got["value"]


def test_past_rows_count_only_rows_dated_no_later_than_the_scored_user():
    """User 3 (no training rows) is scored at time 10: a past row dated 20 does not change their
    scores, the same row dated 9 does; their own row is never counted; by hand at alpha inf."""
    train = sp.csr_matrix(np.array([[1, 1, 0, 0],
                                    [1, 0, 0, 1],
                                    [0, 1, 1, 0],
                                    [0, 0, 0, 0]], dtype=np.float32))
    code = np.array([1, 2, 1, 1])
    at = np.array([0.0, 0.0, 0.0, 10.0])
    three = torch.tensor([3])

    def scores(users, items, times, alpha=1.0, mode="naive-bayes", weight=5.0):
        past = coldstart.PastRows(np.array(users), np.array(items), np.array(times, dtype=float), at, weight)
        return coldstart.SegmentPrior(train, [code], alpha, mode, past=past).score_all(three).numpy()[0]

    for mode in coldstart.SegmentPrior.MODES:
        before = scores([0], [2], [5.0], mode=mode)
        assert np.array_equal(scores([0, 1], [2, 3], [5.0, 20.0], mode=mode), before)  # dated after: ignored
        assert not np.allclose(scores([0, 1], [2, 3], [5.0, 9.0], mode=mode), before)  # dated before: counted
        assert np.array_equal(scores([0, 3], [2, 3], [5.0, 1.0], mode=mode), before)  # own row: never
        assert not np.allclose(before, scores([], [], [], mode=mode))
    counts = np.array([2.0, 2, 1 + 5, 1])  # training rows + the row dated 5 (weight 5); not the one at 20
    expect = np.log((counts + 0.5) / (counts.sum() + 0.5 * 4))
    assert np.allclose(scores([0, 1], [2, 3], [5.0, 20.0], alpha=float("inf")), expect)
    # the segment of value 1 (users 0, 2, 3): the row of user 0 dated 5 counts, user 1 is value 2
    p = np.exp(expect)
    c1 = np.array([1.0, 2, 1 + 5, 0])
    m = 1.0 * counts.sum() / 2
    nb = expect + np.log((c1 + m * p) / (c1.sum() + m)) - expect
    assert np.allclose(scores([0, 1], [2, 3], [5.0, 20.0]), nb)
    # score_codes: every past row (deployment: all of them are past), or those up to ``at``
    prior = coldstart.SegmentPrior(train, [code], float("inf"), past=coldstart.PastRows(
        np.array([0, 1]), np.array([2, 3]), np.array([5.0, 20.0]), at, 5.0))
    everything = np.array([2.0, 2, 6, 6])
    assert np.allclose(prior.score_codes([np.array([1])])[0],
                       np.log((everything + 0.5) / (everything.sum() + 2)))
    assert np.allclose(prior.score_codes([np.array([1])], at=np.array([10.0]))[0], expect)


def test_past_rows_all_dated_before_equal_the_weighted_scorer():
    """Past-only with every latest row dated before the scored users is latest_weighted's corpus."""
    data, codes = _planted_segments(n_users=200)
    cold = np.arange(0, 200, 7)
    keep = ~np.isin(data.test.users, cold)
    latest = HoldOut(data.test.users[keep], data.test.items[keep], data.test.candidates[keep])
    train = sp.diags(np.isin(np.arange(200), cold, invert=True).astype(float)) @ data.train.matrix
    corpus, weights = coldstart.latest_weighted(train, latest, 30.0)
    at = np.full(200, 100.0)
    past = coldstart.PastRows(latest.users, latest.items, np.linspace(0, 99, len(latest.users)), at, 30.0)
    for mode in coldstart.SegmentPrior.MODES:
        for alpha in (0.3, 3.0, float("inf")):
            want = coldstart.SegmentPrior(corpus, codes, alpha, mode, weights=weights).score_all(torch.tensor(cold))
            got = coldstart.SegmentPrior(train, codes, alpha, mode, past=past).score_all(torch.tensor(cold))
            assert torch.allclose(got, want, atol=1e-5), (mode, alpha)
    # half of them dated after the users: no longer the same
    late = coldstart.PastRows(latest.users, latest.items, np.linspace(0, 199, len(latest.users)), at, 30.0)
    got = coldstart.SegmentPrior(train, codes, 3.0, past=late).score_all(torch.tensor(cold))
    assert not torch.allclose(got, coldstart.SegmentPrior(corpus, codes, 3.0, weights=weights).score_all(
        torch.tensor(cold)), atol=1e-5)


def test_choose_weighting_with_past_rows_never_counts_the_held_out_users():
    """As with weights: a fold's own latest rows, even dated before everyone, are not counted."""
    data, codes = _planted_segments(n_users=200)
    at = np.full(200, 1.0)
    ws = {"none": None, "huge": coldstart.PastRows(data.test.users, data.test.items, np.zeros(len(data.test)), at,
                                                   1e9)}
    got = coldstart.choose_weighting(data.train.matrix, ws, data.test, data.seen(), "full", folds=5)
    corpus, huge = coldstart.latest_weighted(data.train.matrix, data.test, 1e9)
    oracle = coldstart.SegmentPrior(corpus, [], float("inf"), weights=huge)
    assert got["by_weighting"]["huge"] < evaluate(oracle, data.test, "full", seen=data.seen())["ndcg@10"]
    joint = coldstart.choose_weighting(data.train.matrix, ws, data.test, data.seen(), "full", folds=5,
                                       user_codes=codes, alphas=(1.0, float("inf")))
    assert joint["weighting"] in ws and joint["mode"] in coldstart.SegmentPrior.MODES


def test_past_rows_errors_and_latest_times(tmp_path):
    from ncf.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match="weight of the past rows must be a finite number >= 0, got -1"):
        coldstart.PastRows(np.array([0]), np.array([0]), np.array([0.0]), np.zeros(2), -1)
    with pytest.raises(ConfigError, match=r"differ in length \(\[1, 2\]\)"):
        coldstart.PastRows(np.array([0]), np.array([0, 1]), np.array([0.0]), np.zeros(2))
    train = sp.csr_matrix(np.eye(3))
    with pytest.raises(ConfigError, match="2 user times for 3 users"):
        coldstart.SegmentPrior(train, [], past=coldstart.PastRows(np.array([0]), np.array([1]), np.ones(1),
                                                                   np.zeros(2)))
    with pytest.raises(ConfigError, match=r"item index 7 outside 0\.\.2"):
        coldstart.SegmentPrior(train, [], past=coldstart.PastRows(np.array([0]), np.array([7]), np.ones(1),
                                                                   np.zeros(3)))
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "t.train.rating").write_text("0\t0\n0\t1\n1\t1\n1\t2\n2\t0\n")
    (d / "t.test.rating").write_text("0\t2\t5\t900\n2\t1\t4\t300\n")
    (d / "t.test.negative").write_text("(0,2)\t1\n(2,1)\t2\n")
    assert coldstart.latest_times(DataConfig(source=str(d), valid=False)).tolist() == [900, -np.inf, 300]
    (d / "t.test.rating").write_text("0\t2\n2\t1\n")
    with pytest.raises(DataError, match="no timestamps"):
        coldstart.latest_times(DataConfig(source=str(d), valid=False))
    plays = tmp_path / "plays.csv"
    plays.write_text("\n".join(_drifting(n_users=20)) + "\n")
    with pytest.raises(ConfigError, match="NCF-layout"):
        coldstart.latest_times(DataConfig(source=str(plays), rating_col="2", time_col="3"))


def test_run_recency_rows_on_the_ncf_layout_are_past_only(tmp_path):
    """An NCF-layout folder with timed latest rows: the benchmark's recency rows count past rows
    only (``recency_past_only``), and counting every latest row (``past_only=False``) differs."""
    data, _ = _planted_segments(n_users=200, n_items=70)
    d = tmp_path / "ncf"
    d.mkdir()
    users, items = data.train.matrix.nonzero()
    (d / "p.train.rating").write_text("".join(f"{u}\t{i}\n" for u, i in zip(users, items, strict=True)))
    rng = np.random.default_rng(1)
    times = rng.permutation(len(data.test.users)) * 1000
    (d / "p.test.rating").write_text("".join(f"{u}\t{i}\t5\t{t}\n" for u, i, t in zip(
        data.test.users, data.test.items, times, strict=True)))
    seen = data.train.matrix.tolil()
    neg = []
    for u, i in zip(data.test.users, data.test.items, strict=True):
        cand = [j for j in range(70) if j != i and not seen[u, j]][:20]
        neg.append(f"({u},{i})\t" + "\t".join(map(str, cand)) + "\n")
    (d / "p.test.negative").write_text("".join(neg))
    cfg = DataConfig(source=str(d), valid=False)
    past = coldstart.run(cfg, None, tmp_path / "a", fraction=0.1, seed=0, progress=False, recency=True, folds=3)
    assert past["recency_past_only"] is True
    assert coldstart.latest_times(cfg)[data.test.users].tolist() == times.tolist()
    every = coldstart.run(cfg, None, tmp_path / "b", fraction=0.1, seed=0, progress=False, recency=True, folds=3,
                          past_only=False)
    assert every["recency_past_only"] is False and past["cold"]["pop"] == every["cold"]["pop"]
    # the cold test users' recent-pop row, recomputed user by user: warm latest rows dated <= theirs
    from ncf.data.datasets import load_dataset

    full = load_dataset(cfg)
    warm, cold = coldstart.cold_split(full, 0.1, 0)
    at = coldstart.latest_times(cfg)
    base = np.bincount(warm.train.matrix.indices, minlength=70).astype(float)

    class ByHand(coldstart._Scorer):
        n_users, n_items, name = 200, 70, "by hand"

        def __init__(self, w):
            self.w = w

        def score_all(self, users):
            out = []
            for u in users.numpy():
                keep = at[warm.test.users] <= at[u]
                c = base + self.w * np.bincount(warm.test.items[keep], minlength=70)
                out.append(np.log((c + 0.5) / (c.sum() + 0.5 * 70)))
            return torch.tensor(np.array(out), dtype=torch.float32)

        def score(self, users, items):
            return self.score_all(users)[torch.arange(len(users)), items]

    name = "recent-pop (3-fold CV)"
    for protocol in ("sampled", "full"):
        w = float(past["choices"][name][protocol]["weighting"].split("x")[1])
        got = evaluate(ByHand(w), cold, protocol, seen=full.seen(include_valid=True))
        assert got == pytest.approx(past["cold"][name][protocol]), protocol
