"""``mf`` (dot product + biases, Rendle et al. 2020) and the iALS unobserved weight."""

import dataclasses

import numpy as np
import pytest
import torch

from ncf.checkpoint import load_model, save_model
from ncf.config import TrainConfig
from ncf.models import MODELS, get_model_class
from ncf.train.trainer import Trainer


def test_registered():
    assert MODELS["mf"] == "ncf.models.mf:MF"
    cls = get_model_class("mf")
    assert cls.trainable and cls.params["factors"] == 64 and cls.params["l2"] == 0.005


def test_score_is_dot_product_plus_biases_and_score_all_agrees(tmp_path):
    torch.manual_seed(0)
    m = get_model_class("mf").from_params(7, 5, factors=3)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    u, i = torch.tensor([0, 3, 6]), torch.tensor([4, 0, 2])
    expect = ((m.user_emb.weight[u] * m.item_emb.weight[i]).sum(-1) + m.user_bias.weight[u, 0]
              + m.item_bias.weight[i, 0] + m.bias)
    assert torch.allclose(m.score(u, i), expect, atol=1e-6)
    full = m.score_all(torch.arange(7))
    pairs = m.score(torch.arange(7).repeat_interleave(5), torch.arange(5).repeat(7)).view(7, 5)
    assert full.shape == (7, 5) and torch.allclose(full, pairs, atol=1e-5)
    save_model(tmp_path, m)
    back = load_model(tmp_path)
    assert back.hparams() == m.hparams() and torch.equal(back.score(u, i), m.score(u, i))


def test_init_std_default_is_point_one_over_sqrt_dim():
    torch.manual_seed(0)
    m = get_model_class("mf").from_params(2000, 2000, factors=100)
    assert abs(float(m.user_emb.weight.std()) - 0.01) < 0.001
    m = get_model_class("mf").from_params(2000, 2000, factors=100, init_std=0.1)
    assert abs(float(m.item_emb.weight.std()) - 0.1) < 0.01


def test_regularization_is_l2_of_the_batch_rows():
    m = get_model_class("mf").from_params(4, 3, factors=2, l2=0.5)
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(1.0)
    users, items = torch.tensor([0, 1]), torch.tensor([2, 2])
    # each example: |p_u|² + |q_i|² + b_u² + b_i² = 2 + 2 + 1 + 1 = 6; mean over 2, times 0.5
    assert float(m.regularization(users, items)) == pytest.approx(0.5 * 12 / 2)
    assert get_model_class("mf").from_params(4, 3, l2=0.0).regularization(users, items) is None


@pytest.mark.parametrize("bad", [{"factors": 0}, {"l2": -1.0}, {"init_std": -0.1}, {"dim": 3}])
def test_bad_params_refused(bad):
    with pytest.raises(ValueError):
        get_model_class("mf").from_params(3, 3, **bad)


def test_learns_planted_groups(toy_dataset, own_group_auc):
    cfg = TrainConfig(model="mf", factors=8, l2=0.0, epochs=25, batch_size=64, lr=0.01, patience=0, device="cpu")
    cls = get_model_class("mf")
    torch.manual_seed(0)
    m = cls.from_params(toy_dataset.n_users, toy_dataset.n_items, **cfg.model_params(cls))
    Trainer(m, dataclasses.replace(toy_dataset, valid=None), cfg, None, progress=False).fit()
    users = np.arange(toy_dataset.n_users)
    assert own_group_auc(m.score_all(torch.as_tensor(users)).numpy(), toy_dataset, users) > 0.9


def test_ials_unobserved_weight_is_a_parameter(toy_dataset, own_group_auc):
    pytest.importorskip("implicit")
    cls = get_model_class("ials")
    assert "unobserved_weight" in cls.params
    m = cls.from_params(toy_dataset.n_users, toy_dataset.n_items, factors=4, unobserved_weight=0.3,
                        regularization=0.05, iterations=8, frequency_scaling=0.0)
    m.fit(toy_dataset, TrainConfig(model="ials", threads=1))
    users = np.arange(toy_dataset.n_users)
    assert own_group_auc(m.score_all(torch.as_tensor(users)).numpy(), toy_dataset, users) > 0.9
    with pytest.raises(ValueError, match="unobserved_weight"):
        cls.from_params(3, 3, unobserved_weight=-1.0)
