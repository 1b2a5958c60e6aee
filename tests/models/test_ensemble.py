"""``ensemble``: z-scored blend of members, weights chosen on validation, self-contained runs."""

import json

import numpy as np
import pytest
import torch

from ncf.checkpoint import load_model, save_model
from ncf.config import TrainConfig
from ncf.data.datasets import DataConfig
from ncf.errors import ConfigError
from ncf.eval.evaluator import evaluate
from ncf.models import MODELS, get_model_class
from ncf.models.ensemble import simplex_grid, zscore
from ncf.train.run import train


def test_registered_and_fitted():
    assert MODELS["ensemble"] == "ncf.models.ensemble:Ensemble"
    assert not get_model_class("ensemble").trainable


def test_simplex_grid():
    g = simplex_grid(3, 0.1)
    assert g.shape == (66, 3) and np.allclose(g.sum(1), 1) and (g >= 0).all()
    assert len({tuple(r) for r in g.round(6)}) == 66
    assert simplex_grid(2, 0.5).tolist() == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    with pytest.raises(ValueError, match="step"):
        simplex_grid(2, 0.3)


def test_zscore_rows():
    z = zscore(torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))
    assert torch.allclose(z[0], torch.tensor([-1.2247449, 0.0, 1.2247449]), atol=1e-6)
    assert torch.equal(z[1], torch.zeros(3))


def _fit(ds, **params):
    m = get_model_class("ensemble").from_params(ds.n_users, ds.n_items, **params)
    return m.fit(ds, TrainConfig(model="ensemble"))


def test_weights_are_the_best_grid_setting_on_validation(toy_dataset):
    m = _fit(toy_dataset, members=["itemknn", "pop"], step=0.25)
    assert len(m.weights) == 2 and sum(m.weights) == pytest.approx(1.0)
    # slow reference: every grid setting as a fixed-weight ensemble through the evaluator
    best = max(evaluate(_with_weights(m, w), toy_dataset.valid)["ndcg@10"] for w in simplex_grid(2, 0.25))
    assert m.selection["valid"] == pytest.approx(best)
    assert evaluate(m, toy_dataset.valid)["ndcg@10"] == pytest.approx(best)


def _with_weights(m, w):
    m2 = get_model_class("ensemble").from_params(m.n_users, m.n_items, **{**m.hparams(), "weights": list(w)})
    m2.load_state_dict(m.state_dict())
    return m2


def test_full_selection_and_score_all_agrees_with_score(toy_dataset):
    m = _fit(toy_dataset, members=["itemknn", "pop"], select="full", step=0.5)
    users = torch.arange(toy_dataset.n_users)
    full = m.score_all(users)
    pairs = m.score(users.repeat_interleave(toy_dataset.n_items),
                    torch.arange(toy_dataset.n_items).repeat(len(users))).view(len(users), -1)
    assert torch.allclose(full, pairs, atol=1e-5)


def test_member_runs_are_copied_in_and_the_run_is_self_contained(toy_dataset, tmp_path):
    dcfg = DataConfig(source="toy")
    runs = []
    for name in ("ease", "itemknn"):
        train(dcfg, TrainConfig(model=name), tmp_path / name, dataset=toy_dataset, progress=False)
        runs.append(str(tmp_path / name))
    out = tmp_path / "ens"
    s = train(dcfg, TrainConfig(model="ensemble", params={"members": runs, "step": 0.5}), out,
              dataset=toy_dataset, progress=False)
    assert s["model"] == "ensemble" and "hr@10" in s["test"]
    cfg = json.loads((out / "config.json").read_text())
    assert [p["model"] for p in cfg["model_params"]["members"]] == ["ease", "itemknn"]
    for r in runs:  # the members' runs are no longer needed
        for f in (tmp_path / r).iterdir():
            f.unlink()
    back = load_model(out)
    assert back.weights == cfg["model_params"]["weights"]
    assert evaluate(back, toy_dataset.test)["ndcg@10"] == pytest.approx(s["test"]["ndcg@10"])


def test_bad_members_refused(toy_dataset, tmp_path):
    cls = get_model_class("ensemble")
    with pytest.raises(ValueError, match="trained by SGD"):
        cls.from_params(3, 3, members=["gmf"])
    with pytest.raises(ValueError, match="neither a run directory"):
        cls.from_params(3, 3, members=["nope"])
    with pytest.raises(ValueError, match="weights"):
        cls.from_params(3, 3, members=["pop", "itemknn"], weights=[1.0])
    m = cls.from_params(toy_dataset.n_users, toy_dataset.n_items, members=["pop"])
    save_model(tmp_path / "one", m)
    with pytest.raises(ValueError, match="users x"):
        cls.from_params(3, 3, members=[str(tmp_path / "one")])


def test_weights_that_cannot_fit_in_memory_are_refused_before_scoring(toy_dataset, monkeypatch):
    import ncf.models.base as base
    from ncf.models.ensemble import Ensemble

    monkeypatch.setattr(base, "available_memory", lambda: 1000)  # bytes: far below every member's scores

    def never(*a, **k):
        raise AssertionError("members scored before the memory check")

    monkeypatch.setattr(Ensemble, "_member_scores", never)
    with pytest.raises(ConfigError, match="ensemble: the fit needs about .* validation rows"):
        _fit(toy_dataset, members=["pop", {"model": "pop"}], step=0.25)  # pop: no memory of its own to check
