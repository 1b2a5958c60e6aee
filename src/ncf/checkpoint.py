"""Run directories as data, not code: safetensors weights, JSON config, JSON id maps.

Layout of a run directory::

    config.json        {"format": 1, "model": name, "model_params": {...}, "train": {...},
                        "data": {...}, "n_users": U, "n_items": I}
    model.safetensors  the weights (best epoch)
    idmap.json         raw ids of users and items, by index
    train.safetensors  the training interactions (CSR indptr/indices), for seen-filtering
                       and popularity fallback without the dataset
    items.json         titles / genres by item index, where the dataset has them

No pickle anywhere; every load error names the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ncf import outputs
from ncf.data.interactions import IdMap, load_idmaps, save_idmaps
from ncf.errors import CheckpointError  # noqa: F401 (re-exported)
from ncf.models import Model, get_model_class

FORMAT = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``data`` to a temporary file beside ``path``, renamed into place; a failure (full disk,
    read-only folder) is a one-line ``WriteError`` and leaves no temporary file."""
    outputs.atomic_write_bytes(path, data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    outputs.atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from None


def read_json(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def save_model(directory: Path, model: Model, extra_config: dict[str, Any] | None = None,
               filename: str = "model.safetensors") -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(directory / filename, dict(model.state_dict()))
    cfg = {"format": FORMAT, "model": model.name, "model_params": model.hparams(),
           "n_users": model.n_users, "n_items": model.n_items, **(extra_config or {})}
    atomic_write_json(directory / "config.json", cfg)


# the keys of config.json; another is a typo or a newer format, said rather than ignored
CONFIG_KEYS = {"format", "model", "model_params", "n_users", "n_items", "train", "data", "dataset_report"}


def check_config_keys(cfg: dict[str, Any], where: Path) -> None:
    """Unknown keys at the top level of config.json or under its ``train`` or ``data`` are errors
    naming the file and the key."""
    from ncf.config import TrainConfig
    from ncf.data.datasets import DataConfig

    unknown = sorted(set(cfg) - CONFIG_KEYS)
    if unknown:
        raise CheckpointError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (known: "
                              f"{', '.join(sorted(CONFIG_KEYS))})")
    for part, cls in (("train", TrainConfig), ("data", DataConfig)):
        sub = cfg.get(part)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise CheckpointError(f"{where}: {part!r} should be an object, not {type(sub).__name__}")
        unknown = sorted(set(sub) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise CheckpointError(f"{where}: unknown key(s) under {part!r}: {', '.join(map(repr, unknown))}")


def build_model(cfg: dict[str, Any], where: Path) -> Model:
    try:
        cls = get_model_class(cfg["model"])
        return cls.from_params(cfg["n_users"], cfg["n_items"], **cfg.get("model_params", {}))
    except KeyError as e:
        raise CheckpointError(f"{where}: config.json lacks {e}") from None
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{where}: config.json does not describe a valid model ({e})") from None


def load_model(directory: Path, filename: str = "model.safetensors", device: str | torch.device = "cpu") -> Model:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such run directory")
    cfg = read_json(directory / "config.json")
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"{directory / 'config.json'}: not an ncf run config (format {FORMAT})")
    check_config_keys(cfg, directory / "config.json")
    model = build_model(cfg, directory / "config.json")
    state = load_tensors(directory / filename)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise CheckpointError(
            f"{directory / filename}: weights do not match config.json's {cfg['model']} model ({first} ...)"
        ) from None
    return model.to(device).eval()


def load_config(directory: Path) -> dict[str, Any]:
    return read_json(Path(directory) / "config.json")


def save_train_matrix(directory: Path, matrix: sp.csr_matrix) -> None:
    m = matrix.tocsr()
    save_tensors(Path(directory) / "train.safetensors", {
        "indptr": torch.from_numpy(m.indptr.astype(np.int64)),
        "indices": torch.from_numpy(m.indices.astype(np.int64)),
        "shape": torch.tensor(m.shape, dtype=torch.int64),
    })


def load_train_matrix(directory: Path) -> sp.csr_matrix:
    path = Path(directory) / "train.safetensors"
    t = load_tensors(path)
    try:
        indptr, indices = t["indptr"].numpy(), t["indices"].numpy()
        shape = tuple(int(x) for x in t["shape"])
        return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=shape)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: not a training matrix ({e})") from None


def training_mismatch(directory: Path, train: sp.spmatrix) -> int | None:
    """How many (user, item) cells the run's saved training matrix and ``train`` disagree on: 0
    where the run was trained on exactly this split, None where it saved none. A run evaluated
    on a split other than its own (another file, split, seed, or the leave-one-out tie rule of
    an older ncf) could be asked for items it was trained on."""
    if not (Path(directory) / "train.safetensors").exists():
        return None
    trained = load_train_matrix(directory)
    if trained.shape != train.shape:
        return max(trained.nnz, train.nnz)
    return int((trained.astype(bool) != sp.csr_matrix(train).astype(bool)).nnz)


def save_run_data(directory: Path, user_map: IdMap, item_map: IdMap, train: sp.csr_matrix | None,
                  item_info: dict | None) -> None:
    """Id maps, the training matrix (the seen filter; None: written later, by a sharded run's
    assembly from its ranks' rows) and item titles."""
    with outputs.writing(Path(directory) / "idmap.json"):
        save_idmaps(directory, user_map, item_map)
    if train is not None:
        save_train_matrix(directory, train)
    if item_info:
        atomic_write_json(Path(directory) / "items.json", item_info)


def load_run_maps(directory: Path) -> tuple[IdMap, IdMap]:
    try:
        return load_idmaps(directory)
    except FileNotFoundError:
        raise CheckpointError(f"{Path(directory) / 'idmap.json'}: missing") from None
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def load_item_info(directory: Path) -> dict | None:
    path = Path(directory) / "items.json"
    return read_json(path) if path.exists() else None
