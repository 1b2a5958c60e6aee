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


# --- where an export is written (ncf.outputs) --------------------------------------------------

def _run(directory):
    directory.mkdir()
    inter = Interactions.from_raw(np.array([1, 1, 2, 3]), np.array([10, 11, 10, 12]))
    model = _spread(GMF.from_params(inter.n_users, inter.n_items, factors=3))
    save_run_data(directory, inter.user_map, inter.item_map, inter.matrix, None)
    save_model(directory, model, {"data": {"source": "synthetic"}})
    return directory


def _export(*args):
    """(exit status as ``ncf`` gives it: 2 for ncf's own errors, output and error text)."""
    from ncf.errors import NcfError

    res = CliRunner().invoke(app, ["export", *map(str, args)])
    code = 2 if isinstance(res.exception, NcfError) else res.exit_code
    return code, res.output + str(res.exception or "")


def test_export_never_replaces_a_run_file_or_a_users_file(tmp_path):
    """``--out RUN/model.safetensors`` overwrote the weights with ONNX bytes; ``--out data.csv``
    replaced an existing file without asking."""
    from ncf.errors import RunExistsError

    run = _run(tmp_path / "run")
    weights = (run / "model.safetensors").read_bytes()
    with pytest.raises(RunExistsError, match="run directory"):
        export_onnx(GMF.from_params(3, 3, factors=2), run / "model.safetensors")
    code, out = _export(run, "--out", run / "model.safetensors")
    assert code == 2 and (run / "model.safetensors").read_bytes() == weights, out
    data = tmp_path / "data.csv"
    data.write_text("user,item\n1,10\n")
    code, out = _export(run, "--out", data)
    assert code == 2 and data.read_text() == "user,item\n1,10\n", out
    assert _export(run, "--out", data, "--overwrite")[0] == 0
    ort.InferenceSession(str(data), providers=["CPUExecutionProvider"])  # now an ONNX file
    for _ in range(2):  # the run's own export is replaced freely
        assert _export(run)[0] == 0
    assert not list(tmp_path.rglob("*.tmp"))


def test_export_opset_onnxruntime_cannot_run_is_refused(tmp_path):
    """``--opset 5`` reported success for a file onnxruntime cannot load."""
    run = _run(tmp_path / "run")
    code, out = _export(run, "--opset", "5", "--out", tmp_path / "m.onnx")
    assert code == 2 and not (tmp_path / "m.onnx").exists()
    from ncf.errors import ConfigError

    with pytest.raises(ConfigError, match="--opset 5: must be 7"):
        export_onnx(GMF.from_params(3, 3, factors=2), tmp_path / "m.onnx", opset=5)
    assert _export(run, "--opset", "7", "--out", tmp_path / "m.onnx")[0] == 0


def test_export_folders_read_only_full_and_missing(tmp_path, monkeypatch):
    """A missing folder is created; a read-only one and a full disk are one line, leaving nothing."""
    import errno
    import os

    run = _run(tmp_path / "run")
    assert _export(run, "--out", tmp_path / "new" / "sub" / "m.onnx")[0] == 0
    assert (tmp_path / "new" / "sub" / "m.onnx").exists()
    real_open = os.open

    def ro_open(path, flags, *a, **kw):
        if str(path).startswith(str(tmp_path / "ro")) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **kw)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", ro_open)
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "ro" / "m.onnx")])
    assert res.exit_code != 0 and "read-only file system" in str(res.exception), res.exception
    monkeypatch.setattr(os, "open", real_open)

    def full(*a, **kw):
        open(a[2], "wb").write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), a[2])

    monkeypatch.setattr(torch.onnx, "export", full)
    res = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "full.onnx")])
    assert res.exit_code != 0 and "no space left" in str(res.exception), res.exception
    assert not (tmp_path / "full.onnx").exists() and not list(tmp_path.rglob("*.tmp"))
