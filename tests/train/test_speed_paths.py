"""The fast paths compute what the plain ones do: gather vs nn.Embedding, first layer on the
tables vs per row, chunked score_all vs score, sparse vs dense gradients, the joint optimizer's
state, the learning-rate schedule, prefetching, and the distributed loss weighting."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ncf.config import TrainConfig
from ncf.data.sampling import NegativeSampler, hash32
from ncf.models import kernels
from ncf.models.gmf import GMF
from ncf.models.mlp import MLP
from ncf.models.neumf import NeuMF
from ncf.train.sparse import JointOptimizer, RowAdam, make_sparse_optimizer, use_sparse
from ncf.train.trainer import Trainer


def _grads(model):
    return {k: (p.grad.to_dense() if p.grad.is_sparse else p.grad).clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("sparse", [False, True])
def test_gather_matches_embedding(sparse):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 6, sparse=sparse).double()
    idx = torch.randint(0, 50, (300,))
    w = torch.randn(300, 6, dtype=torch.float64)
    (emb(idx) * w).sum().backward()
    ref = emb.weight.grad.to_dense().clone()
    emb.weight.grad = None
    out = kernels.gather(emb.weight, idx.int(), sparse=sparse)
    assert torch.equal(out, emb(idx))
    (out * w).sum().backward()
    assert emb.weight.grad.is_sparse == sparse
    torch.testing.assert_close(emb.weight.grad.to_dense(), ref)
    with pytest.raises(IndexError):
        kernels.gather(emb.weight, torch.tensor([50]))


@pytest.mark.parametrize("cls,kw", [(MLP, {"layers": (16, 8, 4)}), (NeuMF, {"factors": 4, "layers": (16, 8, 4)})])
def test_table_path_equals_row_path(cls, kw, monkeypatch):
    """Logits and every gradient agree (float64) whichever way the first layer is applied.
    (GMF has no first layer, so no table path: it is not a case here.)"""
    torch.manual_seed(1)
    model = cls(20, 30, **kw).double()
    u, i = torch.randint(0, 20, (400,)), torch.randint(0, 30, (400,))
    y = (torch.rand(400) < 0.3).double()
    results, asked = [], []
    for tables in (True, False):
        monkeypatch.setattr("ncf.models.mlp.use_tables", lambda *a, t=tables: asked.append(t) or t)
        model.zero_grad()
        logits = model(u, i)
        F.binary_cross_entropy_with_logits(logits, y).backward()
        results.append((logits.detach().clone(), _grads(model)))
    assert True in asked and False in asked  # each forward really chose its path
    torch.testing.assert_close(results[0][0], results[1][0])
    for k in results[0][1]:
        torch.testing.assert_close(results[0][1][k], results[1][1][k], msg=k)


def test_use_tables_threshold():
    assert kernels.use_tables(10_000, 6040, 3706)
    assert not kernels.use_tables(4096, 6040, 3706)
    assert not kernels.use_tables(10_000, 6040, 3706, sparse=True)


@pytest.mark.parametrize("cls,kw", [(MLP, {"layers": (16, 8, 4)}), (NeuMF, {"factors": 4, "layers": (16, 8, 4)}),
                                    (MLP, {"layers": (16,)})])
def test_chunked_score_all_equals_score(cls, kw):
    torch.manual_seed(2)
    model = cls(9, 13, **kw).double().eval()
    users = torch.tensor([0, 3, 8, 3, 5])
    full = model.score_all(users)
    pairs = model.score(users.repeat_interleave(13), torch.arange(13).repeat(5)).view(5, 13)
    torch.testing.assert_close(full, pairs)
    if cls is MLP and len(kw["layers"]) > 1:  # chunks of one user at a time give the same numbers
        tiny = model.tower.all_items(users, chunk=1, project=model.predict.weight[0]) + model.predict.bias
        torch.testing.assert_close(tiny, full)


def test_hash_is_uniform_and_deterministic():
    x = hash32(torch.arange(200_000))
    assert x.min() >= 0 and x.max() < 2**32
    assert torch.equal(x, hash32(torch.arange(200_000)))
    buckets = torch.bincount((x * 97) >> 32, minlength=97).double()
    expected = 200_000 / 97
    chi2 = float(((buckets - expected) ** 2 / expected).sum())
    assert chi2 < 160  # 96 degrees of freedom: p < 1e-4 beyond ~150
    assert len(torch.unique(x)) > 199_990  # (almost) a bijection on small inputs


def test_shards_have_equal_step_counts_and_cover_the_epoch():
    rng = np.random.default_rng(0)
    m = sp.csr_matrix((rng.random((30, 40)) < 0.2).astype(np.float32))
    s = NegativeSampler(m, n_neg=3, seed=0)
    n = s.n_samples()
    shards = [list(s.batches(4, 50, shard=(r, 3))) for r in range(3)]
    assert len({len(sh) for sh in shards}) == 1 == (len(shards[0]) == -(-n // 150))
    assert sum(len(b[0]) for sh in shards for b in sh) == n
    assert len(shards[2][-1][0]) < 50  # the tail of the epoch: short or empty batches
    with pytest.raises(ValueError, match="outside world size"):
        next(s.batches(0, 10, shard=(3, 3)))


def test_epoch_plan_needs_no_epoch_sized_copies():
    rng = np.random.default_rng(0)
    m = sp.csr_matrix((rng.random((50, 80)) < 0.1).astype(np.float32))
    plan = NegativeSampler(m, n_neg=4, seed=0).plan(1)
    assert plan.perm.dtype == torch.int32 and plan.perm.element_size() * len(plan) == 4 * len(plan)
    u, i, y = plan.batch(10, 20)
    assert u.dtype == i.dtype == torch.int64 and y.dtype == torch.float32 and len(u) == 10


def test_lr_schedule(toy_dataset):
    def lrs(**kw):
        cfg = TrainConfig(model="gmf", epochs=4, lr=0.1, device="cpu", **kw)
        t = Trainer(GMF(toy_dataset.n_users, toy_dataset.n_items, 4), toy_dataset, cfg, None, progress=False)
        return [t.lr_at(e, s, 10) for e in range(1, 5) for s in range(10)]

    assert set(lrs()) == {0.1}
    cos = lrs(lr_schedule="cosine")
    assert cos[0] == pytest.approx(0.1) and all(a >= b for a, b in zip(cos, cos[1:], strict=False)) and cos[-1] < 0.001
    warm = lrs(warmup_epochs=1, lr_schedule="linear")
    assert warm[0] == pytest.approx(0.01) and warm[9] == pytest.approx(0.1) and max(warm) <= 0.1 + 1e-12
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ValueError, match="warmup_epochs must be in"):
        TrainConfig(epochs=2, warmup_epochs=3)


@pytest.mark.parametrize("n_rows", [10, 100_000])  # bitmap and sort
def test_distinct_rows(n_rows):
    idx = torch.randint(0, 10, (500,)) * (n_rows // 10)
    rows, inverse = kernels.distinct(idx, n_rows)
    ref_rows, ref_inverse = torch.unique(idx, return_inverse=True)
    assert torch.equal(rows, ref_rows) and torch.equal(inverse, ref_inverse)


@pytest.mark.parametrize("fused", [False, True])
def test_row_adam_is_adam_on_the_rows_it_sees(fused):
    """Rows present in every step follow torch's Adam exactly; absent rows do not move."""
    torch.manual_seed(4)
    w0 = torch.randn(6, 3)
    dense, lazy = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    adam, row = torch.optim.Adam([dense], lr=0.1), RowAdam([lazy], lr=0.1, fused=fused)
    idx = torch.tensor([0, 2, 2, 5])
    for _ in range(4):
        target = torch.randn(4, 3)
        for w, opt, sparse in ((dense, adam, False), (lazy, row, True)):
            opt.zero_grad()
            ((kernels.gather(w, idx, sparse=sparse) - target) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(lazy[[0, 2, 5]], dense[[0, 2, 5]])
    assert torch.equal(lazy[[1, 3, 4]], w0[[1, 3, 4]])
    with pytest.raises(ValueError, match="sparse gradients"):
        w = torch.zeros(2, 2, requires_grad=True)
        w.sum().backward()
        RowAdam([w]).step()


def _row_adam_run(fused: bool, threads: int, dtype=torch.float32, steps: int = 5):
    """Tables of 1,000 x 16 and 37 x 3 (rows repeated within a batch, some never drawn), a few
    steps of RowAdam on uncoalesced per-sample gradients; the final weights and moments."""
    g = torch.Generator().manual_seed(7)
    tables = [torch.randn(1000, 16, generator=g, dtype=dtype), torch.randn(37, 3, generator=g, dtype=dtype)]
    params = [torch.nn.Parameter(t) for t in tables]
    opt = RowAdam(params, lr=0.05, fused=fused)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(steps):
            for p in params:
                idx = (torch.rand(300, generator=g) ** 3 * (p.shape[0] * 0.9)).long()  # skewed, duplicates
                vals = torch.randn(300, p.shape[1], generator=g, dtype=dtype)
                p.grad = torch.sparse_coo_tensor(idx[None], vals, p.shape, is_coalesced=False, check_invariants=True)
            opt.step()
    finally:
        torch.set_num_threads(before)
    return [t for p in params for t in (p.detach(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_adam_fused_kernel_matches_the_ops(dtype):
    """The compiled kernel (one pass, rows split between threads) gives the PyTorch-ops update,
    whatever the number of threads; across thread counts bit for bit (each row's gradient is
    summed in sample order by one thread)."""
    ops = _row_adam_run(fused=False, threads=1, dtype=dtype)
    fused = {k: _row_adam_run(fused=True, threads=k, dtype=dtype) for k in (1, 2, 3)}
    for a, b in zip(ops, fused[1], strict=True):
        torch.testing.assert_close(b, a)
    for k in (2, 3):
        assert all(torch.equal(a, b) for a, b in zip(fused[1], fused[k], strict=True)), k
    init = torch.randn(1000, 16, generator=torch.Generator().manual_seed(7), dtype=dtype)
    assert torch.equal(fused[2][0][900:], init[900:])  # never drawn (indexes < 900): as initialised
    assert not torch.equal(fused[2][0][:900], init[:900])


def test_row_adam_fused_refuses_rows_outside_the_table():
    p = torch.nn.Parameter(torch.zeros(10, 4))
    opt = RowAdam([p], lr=0.1, fused=True)
    p.grad = torch.sparse_coo_tensor(torch.tensor([[3, 10]]), torch.ones(2, 4), (10, 4), check_invariants=False)
    with pytest.raises(IndexError, match="row 10 of a table of 10 rows"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(10, 4)) and not opt.state  # nothing moved
    p.grad = torch.sparse_coo_tensor(torch.tensor([[3, 3]]), torch.ones(2, 4), (10, 4), check_invariants=True)
    opt.step()  # and the optimizer still works
    assert (p.detach()[3] < 0).all() and float(opt.state[p]["step"]) == 1


def test_row_adam_without_numba_falls_back_to_the_ops(monkeypatch):
    from ncf.train import sparse

    monkeypatch.setattr(sparse, "_fallback_announced", False)
    monkeypatch.setitem(__import__("sys").modules, "ncf.train.rowkernels", None)  # import fails
    sparse._import_kernels.cache_clear()
    try:
        p = torch.nn.Parameter(torch.zeros(10, 4))
        with pytest.raises(ImportError, match="needs numba"):
            RowAdam([p], fused=True)
        p.grad = torch.sparse_coo_tensor(torch.tensor([[3, 3]]), torch.ones(2, 4), (10, 4), check_invariants=True)
        with pytest.warns(RuntimeWarning, match="falls back to PyTorch ops"):  # announced, also after the refusal
            RowAdam([p], lr=0.1).step()
        assert (p.detach()[3] < 0).all()
    finally:
        sparse._import_kernels.cache_clear()  # the next caller imports the kernels again


def test_sparse_choice_and_errors(toy_dataset):
    big, small = GMF(100_000, 50_000, 4), GMF(100, 50, 4)
    assert use_sparse(big, TrainConfig(batch_size=1024), nccl=False)
    assert not use_sparse(small, TrainConfig(batch_size=1024), nccl=False)
    assert not use_sparse(GMF(6040, 3706, 4), TrainConfig(batch_size=256), nccl=False)  # ML-1M: dense Adam
    assert not use_sparse(big, TrainConfig(batch_size=200_000), nccl=False)
    assert not use_sparse(big, TrainConfig(batch_size=1024), nccl=True)
    assert not use_sparse(big, TrainConfig(batch_size=1024), nccl=False, cuda=True)  # a GPU: dense is faster
    assert use_sparse(big, TrainConfig(batch_size=1024, sparse="on"), nccl=False, cuda=True)
    assert use_sparse(small, TrainConfig(sparse="on"), nccl=False)
    with pytest.raises(ValueError, match="NCCL cannot all-reduce sparse"):
        use_sparse(small, TrainConfig(sparse="on"), nccl=True)
    with pytest.raises(ValueError, match="sparse must be one of"):
        TrainConfig(sparse="yes")


def test_joint_optimizer_state_round_trip():
    torch.manual_seed(3)
    cfg = TrainConfig(lr=0.05)

    def make():
        torch.manual_seed(3)
        model = NeuMF(12, 9, factors=4, layers=(8, 4))
        return model, make_sparse_optimizer(model, cfg)

    def steps(model, opt, k, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(k):
            u, i = torch.randint(0, 12, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
            y = (torch.rand(16, generator=g) < 0.5).float()
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(model(u, i), y).backward()
            opt.step()

    a, opt_a = make()
    assert isinstance(opt_a, JointOptimizer) and a.gmf.user_emb.sparse
    steps(a, opt_a, 3, 0)
    sd = copy.deepcopy(opt_a.state_dict())  # as from a file: no tensors shared with opt_a
    b, opt_b = make()
    b.load_state_dict(a.state_dict())
    opt_b.load_state_dict(sd)
    steps(a, opt_a, 3, 1)
    steps(b, opt_b, 3, 1)
    for (k, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, msg=k)
    with pytest.raises(ValueError, match="parameter groups"):
        opt_b.load_state_dict({"state": {}, "param_groups": sd["param_groups"][:1]})


@pytest.mark.parametrize("sparse", ["off", "on"])
def test_sparse_and_dense_training_both_learn(toy_dataset, sparse):
    cfg = TrainConfig(model="neumf", factors=4, layers=(8, 4), epochs=8, batch_size=64, lr=0.05,
                      device="cpu", patience=0, sparse=sparse)
    torch.manual_seed(0)
    t = Trainer(NeuMF(toy_dataset.n_users, toy_dataset.n_items, 4, (8, 4)), toy_dataset, cfg, None, progress=False)
    assert t.sparse == (sparse == "on")
    s = t.fit()
    assert t.history[-1]["loss"] < 0.9 * t.history[0]["loss"]
    assert s["valid"]["hr@10"] > 0.9  # the held-out item among 1 + 10 candidates


def test_prefetch_changes_nothing(toy_dataset):
    weights = []
    for prefetch in (0, 2):
        cfg = TrainConfig(model="neumf", factors=4, layers=(8, 4), epochs=2, batch_size=32, lr=0.01,
                          device="cpu", patience=0)
        torch.manual_seed(0)
        t = Trainer(NeuMF(toy_dataset.n_users, toy_dataset.n_items, 4, (8, 4)), toy_dataset, cfg, None,
                    progress=False)
        t.prefetch = prefetch
        t.fit()
        weights.append(t.model.state_dict())
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_loss_weighting_of_a_short_final_batch(toy_dataset):
    """Each rank's loss sum is scaled by world / n_global, so averaging over ranks gives the
    mean over the global batch even when the shards are unequal (or empty)."""
    cfg = TrainConfig(model="gmf", factors=4, device="cpu")
    t = Trainer(GMF(toy_dataset.n_users, toy_dataset.n_items, 4), toy_dataset, cfg, None, progress=False)
    u, i = torch.randint(0, toy_dataset.n_users, (10,)), torch.randint(0, toy_dataset.n_items, (10,))
    y = (torch.rand(10) < 0.5).float()
    mean = F.binary_cross_entropy_with_logits(t.model(u, i), y)
    shards = [(u[:7], i[:7], y[:7]), (u[7:], i[7:], y[7:]), (u[:0], i[:0], y[:0])]
    world = len(shards)
    averaged = sum(t._loss_sum(b) * (world / 10) for b in shards) / world
    torch.testing.assert_close(averaged, mean)
    assert t._loss_sum(shards[2]).item() == 0.0


def test_resume_with_dropout_draws_the_same_masks(toy_dataset, tmp_path):
    from safetensors.torch import load_file

    def run(out, epochs, resume=False):
        cfg = TrainConfig(model="neumf", factors=4, layers=(8, 4), dropout=0.3, epochs=epochs, batch_size=64,
                          lr=0.02, device="cpu", patience=0)
        torch.manual_seed(0)
        t = Trainer(NeuMF(toy_dataset.n_users, toy_dataset.n_items, 4, (8, 4), dropout=0.3), toy_dataset, cfg,
                    out, progress=False)
        t.fit(resume=resume)
        return load_file(str(out / "state.safetensors"))

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume=True)
    for k in straight:
        if k.startswith("model."):
            assert torch.equal(straight[k], resumed[k]), k


def test_worker_threads_match_the_plain_path(toy_dataset):
    """Parts of each batch through replicas on 2 threads: the same training as one thread
    (float tolerance), reproducible, and the replicas share the model's weights."""
    def run(workers, dropout=0.0, sparse="auto"):
        cfg = TrainConfig(model="neumf", factors=4, layers=(8, 4), epochs=2, batch_size=200, lr=0.01,
                          device="cpu", patience=0, workers=workers, dropout=dropout, sparse=sparse)
        torch.manual_seed(0)
        t = Trainer(NeuMF(toy_dataset.n_users, toy_dataset.n_items, 4, (8, 4), dropout=dropout), toy_dataset, cfg,
                    None, progress=False)
        assert t.workers == workers and len(t.replicas) == workers
        t.fit()
        if workers > 1:
            assert t.replicas[1].gmf.user_emb.weight.data_ptr() == t.model.gmf.user_emb.weight.data_ptr()
        return t.model.state_dict(), [r["loss"] for r in t.history]

    one, two, again = run(1), run(2), run(2)
    for k in one[0]:
        torch.testing.assert_close(two[0][k], one[0][k], rtol=1e-4, atol=1e-6, msg=k)
        assert torch.equal(two[0][k], again[0][k]), k
    assert two[1] == pytest.approx(one[1], rel=1e-5)
    # sparse row gradients: the replicas' rows are concatenated, the optimizer sums duplicates
    one_sparse, two_sparse = run(1, sparse="on"), run(2, sparse="on")
    for k in one_sparse[0]:
        torch.testing.assert_close(two_sparse[0][k], one_sparse[0][k], rtol=1e-4, atol=1e-6, msg=k)
    assert two_sparse[1] == pytest.approx(one_sparse[1], rel=1e-5)
    dropped, dropped_again = run(2, 0.2), run(2, 0.2)  # dropout: a generator per thread, reproducible
    for k in dropped[0]:
        assert torch.equal(dropped[0][k], dropped_again[0][k]), k
    assert dropped[1] != two[1]
    with pytest.raises(ValueError, match="workers must be >= 0"):
        TrainConfig(workers=-1)


def test_relu_dropout():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 64, dtype=torch.float64, requires_grad=True)
    y = kernels.relu_dropout(x, 0.25, g)
    kept = y != 0
    frac = 1 - kept.sum().item() / (x > 0).sum().item()
    assert abs(frac - 0.25) < 0.02  # about p of the active units dropped
    torch.testing.assert_close(y[kept], x[kept].clamp_min(0) / 0.75)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.double() / 0.75)
    again = kernels.relu_dropout(x, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(again, y)
    assert torch.equal(kernels.relu_dropout(x, 0.0), torch.relu(x))
    with pytest.raises(ValueError, match="dropout must be in"):
        kernels.relu_dropout(x, 1.0)
