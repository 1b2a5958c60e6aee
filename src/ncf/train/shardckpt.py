"""Sharded checkpoints without pickle: each rank its shards as safetensors, a JSON index.

Layout inside a run directory (written by :mod:`ncf.train.sharded`)::

    shards/index.json             which rows and columns of which table live in which rank's file
    shards/state-rank{r}.safetensors  the last epoch: rank r's table shards, their fused optimizer
                                  state, the (replicated) tower and its optimizer state; resume
    shards/best-rank{r}.safetensors   the best-validation epoch: table shards and tower
    shards/train-rank{r}.safetensors  rank r's users' training rows (where each rank loaded only its
                                  users): CSR rows from ``first_user``; assembled into ``train.safetensors``

``index.json``::

    {"format": 1, "world": W, "sharding": ..., "table_optimizer": ...,
     "tables": {"user": {"rows": U, "dim": D, "parts": [[state key, first column, columns], ...],
                         "shards": [{"rank": r, "row": r0, "col": c0, "rows": n, "cols": m}, ...]},
                "item": {...}},
     "dense": [state keys of the tower]}

A table concatenates the model's embedding tables of one side by columns (NeuMF's user
table: GMF's then the MLP's user embeddings); ``parts`` says where each model table sits.
:func:`convert` needs neither TorchRec nor a process group: it assembles the tables on one
machine and writes an ordinary run directory's ``model.safetensors``, so ``ncf evaluate``,
``ncf recommend`` and ``ncf serve`` work on the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ncf.checkpoint import (
    CheckpointError,
    atomic_write_json,
    build_model,
    load_tensors,
    read_json,
    save_model,
    save_tensors,
    save_train_matrix,
)
from ncf.errors import ConfigError

FORMAT = 1
TAGS = ("state", "best")


def shard_dir(run: Path) -> Path:
    return Path(run) / "shards"


def rank_file(run: Path, tag: str, rank: int) -> Path:
    if tag not in TAGS:
        raise ConfigError(f"tag must be one of {TAGS}, got {tag!r}")
    return shard_dir(run) / f"{tag}-rank{rank}.safetensors"


def shard_key(table: str, row: int, col: int) -> str:
    return f"table.{table}.{row}.{col}"


def train_file(run: Path, rank: int) -> Path:
    return shard_dir(run) / f"train-rank{rank}.safetensors"


def save_train_rows(run: Path, rank: int, matrix, lo: int, hi: int) -> None:
    """Rank ``rank``'s users ``lo:hi`` of the training matrix (the run's seen filter, in parts)."""
    m = matrix.tocsr()[lo:hi]
    shard_dir(run).mkdir(parents=True, exist_ok=True)
    save_tensors(train_file(run, rank), {
        "indptr": torch.from_numpy(m.indptr.astype(np.int64)), "indices": torch.from_numpy(m.indices.astype(np.int64)),
        "first_user": torch.tensor([lo], dtype=torch.int64), "shape": torch.tensor(matrix.shape, dtype=torch.int64)})


def assemble_train(run: Path) -> bool:
    """``train.safetensors`` from the ranks' ``train-rank{r}`` files, where there are such files
    (checked: the ranges follow each other and cover every user); False where there are none."""
    files = sorted(shard_dir(run).glob("train-rank*.safetensors"), key=lambda p: int(p.stem[len("train-rank"):]))
    if not files:
        return False
    indptr, indices, end, shape = [np.zeros(1, dtype=np.int64)], [], 0, None
    for path in files:
        t = load_tensors(path)
        try:
            first, ip, ix = int(t["first_user"][0]), t["indptr"].numpy(), t["indices"].numpy()
            here = tuple(int(x) for x in t["shape"])
        except (KeyError, IndexError) as e:
            raise CheckpointError(f"{path}: not a rank's training rows ({e})") from None
        if first != end or (shape is not None and here != shape):
            raise CheckpointError(f"{path}: rows from user {first} of a {here} matrix; the ranks before it end at "
                                  f"user {end} (of {shape}): a rank's file is missing or from another run")
        shape = here
        indptr.append(ip[1:] + indptr[-1][-1])
        indices.append(ix)
        end = first + len(ip) - 1
    if end != shape[0]:
        raise CheckpointError(f"{shard_dir(run)}: the ranks' training rows end at user {end} of {shape[0]}")
    ix = np.concatenate(indices)
    save_train_matrix(run, sp.csr_matrix((np.ones(len(ix), np.float32), ix, np.concatenate(indptr)), shape=shape))
    return True


def write_index(run: Path, index: dict[str, Any]) -> None:
    shard_dir(run).mkdir(parents=True, exist_ok=True)
    atomic_write_json(shard_dir(run) / "index.json", {"format": FORMAT, **index})


def read_index(run: Path) -> dict[str, Any]:
    path = shard_dir(run) / "index.json"
    index = read_json(path)
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an ncf shard index (format {FORMAT})")
    for key in ("world", "tables", "dense"):
        if key not in index:
            raise CheckpointError(f"{path}: lacks {key!r}")
    return index


def assemble(run: Path, tag: str = "best") -> dict[str, torch.Tensor]:
    """The model's full state dict from every rank's ``tag`` file (tables put together on
    this machine: only for tables that fit it)."""
    index = read_index(run)
    files: dict[int, dict[str, torch.Tensor]] = {}

    def tensors(rank: int) -> dict[str, torch.Tensor]:
        if rank not in files:
            files[rank] = load_tensors(rank_file(run, tag, rank))
        return files[rank]

    state: dict[str, torch.Tensor] = {}
    for name, t in index["tables"].items():
        full = torch.empty(t["rows"], t["dim"])
        covered = 0
        for s in t["shards"]:
            key, path = shard_key(name, s["row"], s["col"]), rank_file(run, tag, s["rank"])
            part = tensors(s["rank"]).get(key)
            if part is None or tuple(part.shape) != (s["rows"], s["cols"]):
                got = "missing" if part is None else f"shape {tuple(part.shape)}"
                raise CheckpointError(f"{path}: shard {key} is {got}, index.json says ({s['rows']}, {s['cols']})")
            full[s["row"]: s["row"] + s["rows"], s["col"]: s["col"] + s["cols"]] = part
            covered += s["rows"] * s["cols"]
        if covered != t["rows"] * t["dim"]:
            raise CheckpointError(f"{shard_dir(run) / 'index.json'}: the shards of table {name!r} cover "
                                  f"{covered} of {t['rows'] * t['dim']} entries")
        for key, col, cols in t["parts"]:
            state[key] = full[:, col: col + cols].clone()
    dense = tensors(0)
    for key in index["dense"]:
        if f"dense.{key}" not in dense:
            raise CheckpointError(f"{rank_file(run, tag, 0)}: lacks the tower weight dense.{key}")
        state[key] = dense[f"dense.{key}"]
    return state


def convert(run: Path, tag: str = "best"):
    """Write ``model.safetensors`` of the sharded run ``run`` from its ``tag`` shards (config.json
    kept as it is); returns the model, ready for ``ncf evaluate`` / ``recommend`` / ``serve``."""
    run = Path(run)
    cfg = read_json(run / "config.json")
    model = build_model(cfg, run / "config.json")
    state = assemble(run, tag)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{shard_dir(run)}: shards do not match config.json's {cfg.get('model')} model "
                              f"({str(e).splitlines()[0]})") from None
    extra = {k: v for k, v in cfg.items() if k not in ("format", "model", "model_params", "n_users", "n_items")}
    save_model(run, model, extra)
    assemble_train(run)  # a run whose ranks loaded only their users: the seen filter from their rows
    return model.eval()
