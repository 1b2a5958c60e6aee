"""Export for other runtimes (issue 18): the scoring graph of GMF / MLP / NeuMF as ONNX.

The graph maps index tensors ``users [B]`` and ``items [B]`` (int64; raw ids map to indexes
through the run's ``idmap.json``) to ``logits [B]`` (float32), the model's ``score``: the
same arithmetic as ``forward`` in eval mode, written with plain operators (embedding lookups,
matrix products, ReLU) instead of the training kernels (``ncf.models.kernels``), so that any
ONNX runtime can run it. The batch dimension is dynamic. Needs ``pip install 'ncf[export]'``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ncf.errors import ConfigError
from ncf.models import GMF, MLP, Model, NeuMF
from ncf.outputs import atomic_write, prepare_output_file

FORMATS = ("onnx",)
# the lowest opset onnxruntime runs (its Mul of opset 6 and below has no kernel); the highest is
# what the installed torch can write
MIN_OPSET = 7


class ScoringGraph(nn.Module):
    """``(users [B], items [B]) -> logits [B]`` of a GMF, MLP or NeuMF (shares its weights)."""

    def __init__(self, model: Model):
        super().__init__()
        if not isinstance(model, GMF | MLP | NeuMF):
            raise ConfigError(f"export supports gmf, mlp and neumf models, not {model.name!r}")
        self.gmf = model.gmf if isinstance(model, NeuMF) else model if isinstance(model, GMF) else None
        self.tower = model.mlp.tower if isinstance(model, NeuMF) else model.tower if isinstance(model, MLP) else None
        self.predict = model.predict
        self.name = model.name

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.gmf is not None:
            parts.append(F.embedding(users, self.gmf.user_emb.weight) * F.embedding(items, self.gmf.item_emb.weight))
        if self.tower is not None:
            x = torch.cat([F.embedding(users, self.tower.user_emb.weight),
                           F.embedding(items, self.tower.item_emb.weight)], dim=-1)
            for lin in self.tower.linears:
                x = torch.relu(lin(x))
            parts.append(x)
        h = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return self.predict(h).squeeze(-1)


def max_opset() -> int:
    """The highest ONNX opset the installed torch exports."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:  # pragma: no cover - moved in some torch release
        return 17
    return int(ONNX_MAX_OPSET)


def check_opset(opset: int) -> None:
    """Refuse, before anything is written, an opset onnxruntime cannot run or torch cannot write."""
    if not MIN_OPSET <= opset <= max_opset():
        raise ConfigError(f"--opset {opset}: must be {MIN_OPSET} to {max_opset()} (onnxruntime runs this graph "
                          f"from opset {MIN_OPSET}; the installed torch writes up to {max_opset()})")


def export_onnx(model: Model, path: str | Path, opset: int = 17, overwrite: bool = False) -> Path:
    """Write ``model``'s scoring graph to ``path`` (ONNX, inputs ``users``/``items``, output
    ``logits``); returns the path. Metadata: the model's name, n_users, n_items.

    ``path`` follows ncf's rule for output files (:func:`ncf.outputs.prepare_output_file`): an
    existing file is replaced only with ``overwrite``, and inside a run directory only its own
    ``model.onnx``. The graph is written to a temporary file, checked (the ONNX checker, and a
    load and one batch in onnxruntime where it is installed) and only then renamed to ``path``."""
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install 'ncf[export]'") from None
    check_opset(opset)
    graph = ScoringGraph(model).eval()
    path = prepare_output_file(path, overwrite, run_name="model.onnx")

    def write(tmp: Path) -> None:
        example = (torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript-based exporter: the graph is plain operators, and it needs no onnxscript
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(graph, example, str(tmp), dynamo=False, input_names=["users", "items"],
                              output_names=["logits"], opset_version=opset,
                              dynamic_axes={"users": {0: "batch"}, "items": {0: "batch"}, "logits": {0: "batch"}})
        proto = onnx.load(str(tmp))
        for key, value in (("ncf_model", model.name), ("n_users", str(model.n_users)),
                           ("n_items", str(model.n_items)),
                           ("inputs", "users, items: int64 [batch] indexes (see idmap.json)"),
                           ("output", "logits: float32 [batch]")):
            proto.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        try:
            load_check(tmp)
        except ConfigError:
            tmp.unlink(missing_ok=True)
            raise

    return atomic_write(path, write)


def load_check(path: Path) -> None:
    """Load ``path`` in onnxruntime and score one batch (where onnxruntime is installed); a
    failure is a ConfigError naming the opset problem."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        return
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        zeros = np.zeros(2, np.int64)
        sess.run(["logits"], {"users": zeros, "items": zeros})
    except Exception as e:  # onnxruntime raises its own types (NotImplemented, InvalidGraph, Fail)
        first = str(e).splitlines()[0][:200]
        raise ConfigError(f"the exported graph does not run in onnxruntime {ort.__version__} ({first}); "
                          "nothing was written: try another --opset") from None
