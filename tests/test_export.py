"""ONNX export (issue 18): onnxruntime's scores equal PyTorch's within 1e-5."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ncf.checkpoint import save_model, save_run_data
from ncf.cli import app
from ncf.data.interactions import Interactions
from ncf.models import GMF, MLP, NeuMF, get_model_class

pytest.importorskip("onnx", reason="onnx is not installed (pip install 'ncf[export]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'ncf[export]')")

from ncf.export import export_onnx  # noqa: E402


def _spread(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


@pytest.mark.parametrize("cls,params", [(GMF, {"factors": 6}), (MLP, {"layers": (16, 8, 4)}), (MLP, {"layers": (8,)}),
                                        (NeuMF, {"factors": 4, "layers": (16, 8, 4)})],
                         ids=["gmf", "mlp", "mlp-linear", "neumf"])
def test_onnxruntime_scores_equal_pytorch(tmp_path, cls, params):
    model = _spread(cls.from_params(30, 50, **params))
    path = export_onnx(model, tmp_path / "model.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (1, 7, 500):  # the batch dimension is dynamic
        users, items = rng.integers(0, 30, batch), rng.integers(0, 50, batch)
        (got,) = sess.run(["logits"], {"users": users.astype(np.int64), "items": items.astype(np.int64)})
        want = model.score(torch.from_numpy(users), torch.from_numpy(items)).numpy()
        assert got.shape == (batch,)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["ncf_model"] == model.name and meta["n_items"] == "50"


def test_cli_export_and_refusals(tmp_path):
    inter = Interactions.from_raw(np.array([1, 1, 2, 3]), np.array([10, 11, 10, 12]))
    model = _spread(NeuMF.from_params(inter.n_users, inter.n_items, factors=3, layers=(8, 4)))
    save_run_data(tmp_path, inter.user_map, inter.item_map, inter.matrix, None)
    save_model(tmp_path, model, {"data": {"source": "synthetic"}})
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--format", "onnx"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "model.onnx").exists() and "neumf" in res.output
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--format", "tflite"])
    assert res.exit_code != 0 and "onnx" in str(res.exception or res.output)
    with pytest.raises(ValueError, match="gmf, mlp and neumf"):
        export_onnx(get_model_class("pop").from_params(3, 3), tmp_path / "x.onnx")
