"""One contract suite for the SGD-trained neural models: shapes, batch-of-one, score vs
score_all agreement, checkpoint round trip, learnability on planted structure."""

import dataclasses

import numpy as np
import pytest
import torch

from ncf.checkpoint import load_model, save_model
from ncf.config import TrainConfig
from ncf.models import get_model_class
from ncf.train.trainer import Trainer

NEURAL = {
    "gmf": {"factors": 8},
    "mlp": {"layers": (16, 8, 4)},
    "neumf": {"factors": 4, "layers": (16, 8, 4)},
}


def make(name, n_users=12, n_items=9, **extra):
    torch.manual_seed(0)
    cls = get_model_class(name)
    return cls.from_params(n_users, n_items, **{**NEURAL[name], **extra})


@pytest.mark.parametrize("name", sorted(NEURAL))
def test_shapes_and_batch_of_one(name):
    m = make(name)
    out = m(torch.tensor([1, 2, 3]), torch.tensor([0, 4, 8]))
    assert out.shape == (3,)
    one = m(torch.tensor([5]), torch.tensor([2]))
    assert one.shape == (1,)
    assert m.score_all(torch.tensor([0, 11])).shape == (2, 9)


@pytest.mark.parametrize("name", sorted(NEURAL))
def test_score_all_agrees_with_score(name):
    m = make(name)
    with torch.no_grad():  # make the output depend on everything
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    users = torch.tensor([0, 3, 7, 11])
    full = m.score_all(users)
    pairs = m.score(users.repeat_interleave(9), torch.arange(9).repeat(4)).view(4, 9)
    assert torch.allclose(full, pairs, atol=1e-5)


@pytest.mark.parametrize("name", sorted(NEURAL))
def test_checkpoint_round_trip(name, tmp_path):
    m = make(name)
    save_model(tmp_path, m)
    back = load_model(tmp_path)
    assert type(back) is type(m) and back.hparams() == m.hparams()
    u, i = torch.tensor([0, 5, 11]), torch.tensor([8, 1, 3])
    assert torch.equal(m.score(u, i), back.score(u, i))


@pytest.mark.parametrize("name", sorted(NEURAL))
def test_learns_planted_groups(name, toy_dataset, own_group_auc):
    """Users of group g (u % 2) like items of group g (0-19 / 20-39): after training, own-group
    items must outscore other-group items for almost every (user, item, item) triple. (No
    validation holdout: the trainer keeps the last epoch, not the best of a 60-user validation.)"""
    cls = get_model_class(name)
    cfg = TrainConfig(model=name, epochs=25, batch_size=64, lr=0.01, patience=0, device="cpu",
                      **{k: v for k, v in NEURAL[name].items()})
    torch.manual_seed(0)
    m = cls.from_params(toy_dataset.n_users, toy_dataset.n_items, **cfg.model_params(cls))
    Trainer(m, dataclasses.replace(toy_dataset, valid=None), cfg, None, progress=False).fit()
    users = np.arange(toy_dataset.n_users)
    auc = own_group_auc(m.score_all(torch.as_tensor(users)).numpy(), toy_dataset, users)
    assert auc > 0.9, auc


def test_neumf_from_pretrained_is_the_alpha_mix():
    gmf, mlp = make("gmf", factors=4), make("mlp")
    with torch.no_grad():
        for p in list(gmf.parameters()) + list(mlp.parameters()):
            p.add_(torch.randn_like(p) * 0.5)
    nmf = get_model_class("neumf").from_pretrained(gmf, mlp, alpha=0.3)
    u, i = torch.tensor([0, 4, 9]), torch.tensor([1, 2, 8])
    expected = 0.3 * gmf.score(u, i) + 0.7 * mlp.score(u, i)
    assert torch.allclose(nmf.score(u, i), expected, atol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        get_model_class("neumf").from_pretrained(gmf, mlp, alpha=1.5)


def test_bad_hyperparameters_are_refused():
    with pytest.raises(ValueError, match="unknown parameter"):
        get_model_class("gmf").from_params(3, 3, factors=4, layers=(8, 4))
    with pytest.raises(ValueError, match="layers"):
        get_model_class("mlp").from_params(3, 3, layers="64,x")
    with pytest.raises(ValueError, match="even"):
        get_model_class("mlp").from_params(3, 3, layers=(7, 4))
    with pytest.raises(ValueError, match="unknown model"):
        get_model_class("nope")
