"""Typed, validated training configuration. Unknown keys are errors, never ignored."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from ncf.errors import ConfigError

LOSSES = ("bce", "bpr")
OPTIMIZERS = ("adam", "sgd", "adagrad")
DEVICES = ("auto", "cpu", "cuda")
MONITORS = ("ndcg@10", "hr@10")
SCHEDULES = ("constant", "cosine", "linear")
SPARSE = ("auto", "on", "off")
SHARDINGS = ("auto", "table_wise", "column_wise", "row_wise")
TABLE_OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd", "adam", "rowwise_adam")

# TrainConfig fields by what they apply to (``TrainConfig.for_model`` refuses the rest)
GENERAL_FIELDS = ("seed", "device", "threads")
SGD_FIELDS = ("epochs", "neg", "batch_size", "lr", "optimizer", "lr_schedule", "warmup_epochs", "loss",
              "patience", "monitor", "workers", "sparse", "shard_tables", "sharding", "table_optimizer", "table_lr")
PRETRAIN_FIELDS = ("pretrain", "alpha", "finetune_optimizer", "finetune_lr", "pretrained_gmf", "pretrained_mlp")


@dataclass
class TrainConfig:
    """How a model is trained. ``params`` holds model-specific hyperparameters
    (checked against the model's own list)."""

    model: str = "neumf"
    factors: int = 8
    layers: tuple[int, ...] = (64, 32, 16, 8)
    # MLP tower dropout: with batches of 65536 it gave +0.005 validation HR@10 and NDCG@10 on
    # ncf-ml-1m (3 seeds), the level of the paper's batch of 256 (docs/RESULTS.md, issue 4)
    dropout: float = 0.1
    l2: float = 0.0
    epochs: int = 20
    neg: int = 4
    # large batches keep the per-step overhead small (see docs/RESULTS.md, "Training speed");
    # batch and learning rate chosen on ncf-ml-1m's validation holdout
    # 0 = auto (see `resolved`): 65,536 and 0.02 on ML-1M-sized data, smaller on small data
    batch_size: int = 0
    lr: float = 0.0
    optimizer: str = "adam"
    lr_schedule: str = "constant"  # after warm-up: constant, or cosine/linear decay to 0 at `epochs`
    warmup_epochs: float = 0.0  # linear learning-rate warm-up, in epochs
    loss: str = "bce"
    seed: int = 0
    patience: int = 5  # epochs without improvement on validation before stopping; 0: never
    monitor: str = "ndcg@10"
    device: str = "auto"
    threads: int = 0  # torch intra-op threads; 0: all cores
    # CPU: threads that each train a part of every batch through their own model replica,
    # with single-threaded ops (0: auto, as many as `threads` where the model allows; 1: off)
    workers: int = 0
    # sparse embedding gradients and row-wise (lazy) Adam for the tables: "auto" on CPU where
    # users plus items outnumber a batch and 100,000 (a dense update would cost more than the
    # batch); dense on a GPU
    sparse: str = "auto"
    pretrain: bool = False  # NeuMF: train GMF and MLP first, then fuse (alpha)
    alpha: float = 0.5
    # NeuMF --pretrain: how the fused model is fine-tuned (the paper: plain SGD); lr 0 = `lr`
    finetune_optimizer: str = "sgd"
    finetune_lr: float = 0.0
    # NeuMF --pretrain: fuse these finished GMF / MLP run directories instead of training them
    # (each trained with its own flags on the same training data); "" = train it here
    pretrained_gmf: str = ""
    pretrained_mlp: str = ""
    # embedding tables sharded over the ranks by TorchRec (ncf[scale]; see docs/DISTRIBUTED.md):
    # how the planner may shard them, and the optimizer fused into the tables (the tower keeps
    # `optimizer` / `lr`); table_lr 0 = 0.2 (row-wise AdaGrad, chosen on ml-100k validation)
    shard_tables: bool = False
    sharding: str = "auto"
    table_optimizer: str = "rowwise_adagrad"
    table_lr: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)
    # time limit of this fit: a time.monotonic() value (None: none). Set by ``ncf tune`` on
    # each trial; iterative fits stop there (ncf.deadline). Process-local: never saved
    # (``to_dict`` leaves it out) nor taken from a user's options.
    deadline: float | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        from ncf.models.mlp import parse_layers

        self._check_types()
        self.layers = parse_layers(self.layers)
        checks = [
            (self.factors >= 1, f"factors must be >= 1, got {self.factors}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.neg >= 1, f"neg must be >= 1, got {self.neg}"),
            (self.batch_size >= 0, f"batch_size must be >= 1 (or 0 for auto), got {self.batch_size}"),
            (self.lr >= 0, f"lr must be > 0 (or 0 for auto), got {self.lr}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.l2 >= 0, f"l2 must be >= 0, got {self.l2}"),
            (self.patience >= 0, f"patience must be >= 0, got {self.patience}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"),
            (self.device in DEVICES or self.device.startswith("cuda:"),
             f"device must be one of {', '.join(DEVICES)}, got {self.device!r}"),
            (self.monitor in MONITORS, f"monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}"),
            (0 <= self.alpha <= 1, f"alpha must be in [0, 1], got {self.alpha}"),
            (self.finetune_optimizer in OPTIMIZERS,
             f"finetune_optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.finetune_optimizer!r}"),
            (self.finetune_lr >= 0, f"finetune_lr must be > 0 (or 0 for lr), got {self.finetune_lr}"),
            (self.pretrain or not (self.pretrained_gmf or self.pretrained_mlp),
             "pretrained_gmf / pretrained_mlp apply with pretrain (NeuMF fused from GMF and MLP)"),
            (self.threads >= 0, f"threads must be >= 0, got {self.threads}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.sparse in SPARSE, f"sparse must be one of {', '.join(SPARSE)}, got {self.sparse!r}"),
            (self.lr_schedule in SCHEDULES,
             f"lr_schedule must be one of {', '.join(SCHEDULES)}, got {self.lr_schedule!r}"),
            (not (self.shard_tables and self.pretrain), "shard_tables does not combine with pretrain"),
            (self.sharding in SHARDINGS, f"sharding must be one of {', '.join(SHARDINGS)}, got {self.sharding!r}"),
            (self.table_optimizer in TABLE_OPTIMIZERS,
             f"table_optimizer must be one of {', '.join(TABLE_OPTIMIZERS)}, got {self.table_optimizer!r}"),
            (self.table_lr >= 0, f"table_lr must be > 0 (or 0 for the default), got {self.table_lr}"),
            (0 <= self.warmup_epochs <= self.epochs,
             f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}"),
            (self.deadline is None or isinstance(self.deadline, (int, float)),
             f"deadline must be a time.monotonic() value or None, got {self.deadline!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def _check_types(self) -> None:
        """Each option of the type its field declares (``factors="8"``, ``epochs=1.5`` are refused
        with the option named, rather than failing later with a TypeError naming none)."""
        kinds = {"int": (numbers.Integral, "an integer"), "float": (numbers.Real, "a number"),
                 "str": (str, "a string"), "bool": (bool, "True or False")}
        for f in dataclasses.fields(self):
            kind = kinds.get(str(f.type))
            value = getattr(self, f.name)
            if kind is None:
                continue
            wrong_bool = isinstance(value, bool) and f.type != "bool"  # True is an int to Python, not here
            if wrong_bool or not isinstance(value, kind[0]):
                raise ConfigError(f"{f.name} must be {kind[1]}, got {value!r} ({type(value).__name__})")

    def resolved(self, n_interactions: int) -> TrainConfig:
        """This config with "auto" (0) batch size and learning rate filled in for a training set
        of ``n_interactions``: the batch is the largest power of two up to 65,536 that still
        leaves about 75 steps an epoch (at least 1,024); the learning rate is 0.02 at 65,536
        (chosen on ncf-ml-1m's validation holdout), scaled with the square root of the batch."""
        if self.batch_size and self.lr:
            return self
        samples = max(1, n_interactions * (1 + self.neg))
        bs = self.batch_size or int(min(65536, max(1024, 2 ** math.floor(math.log2(max(samples / 75, 1))))))
        lr = self.lr or 0.02 * math.sqrt(bs / 65536)
        return dataclasses.replace(self, batch_size=bs, lr=lr)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        del d["deadline"]  # a moment of this process: meaningless in a saved run
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def for_model(cls, model: str, options: dict[str, Any], flags: set[str] | None = None) -> TrainConfig:
        """The config of a ``model`` run from the options a user gave (keyword arguments of
        ``ncf.fit``, flags of ``ncf train``). An option is, in this order: a TrainConfig field
        the model takes as a hyperparameter (``config_fields``: factors, layers, ...), one of
        the model's own parameters (``params``: EASE's l2, item2vec's epochs, ...), a general
        field (seed, device, threads), a training field where the model is trained by SGD
        (epochs, lr, ...), a pre-training field for NeuMF. Anything else is refused, naming
        the option and what the model takes. ``flags``: the command line's option names (its
        errors then name flags, and ``--param NAME=...`` for an option without one: ``warmup_epochs``)."""
        from ncf.models import get_model_class

        model_cls = get_model_class(model)
        fields = {f.name for f in dataclasses.fields(cls)} - {"model", "params", "deadline"}
        applies = set(model_cls.config_fields) | set(GENERAL_FIELDS)
        if model_cls.trainable:
            applies |= set(SGD_FIELDS)
        if model == "neumf":
            applies |= set(PRETRAIN_FIELDS)
        kw: dict[str, Any] = {"model": model}
        params: dict[str, Any] = dict(options.get("params") or {})
        refused, unknown = [], []
        for name, value in options.items():
            if name == "params":
                continue
            if name in model_cls.config_fields or (name in applies and name not in model_cls.params):
                kw[name] = value
            elif name in model_cls.params:
                params[name] = value
            elif name in fields:
                refused.append(name)
            else:
                unknown.append(name)
        takes = sorted((applies | set(model_cls.params)) - {"user_features", "item_features"})
        if flags is not None:  # the command line: only what it can pass, spelt as it is passed
            takes = sorted((_flag(n, flags) for n in takes), key=lambda f: (f.startswith("--param"), f))
            refused, unknown = [_flag(n, flags) for n in refused], [_flag(n, flags) for n in unknown]
        if refused:
            raise ConfigError(f"option(s) {', '.join(refused)} do not apply to model {model!r} "
                             f"(it takes: {', '.join(takes)})")
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)} for model {model!r} "
                             f"(it takes: {', '.join(takes)})")
        if "loss" not in kw:  # the model's own default (BPR-MF: bpr)
            kw["loss"] = getattr(model_cls, "default_loss", cls.loss)
        cfg = cls(**kw, params=params)
        cfg.model_params(model_cls)  # parameter values checked now, not at the end of a data load
        return cfg

    def model_params(self, model_cls) -> dict[str, Any]:
        """Hyperparameters for ``model_cls``: its config fields from here plus ``params``."""
        base = {k: getattr(self, k) for k in model_cls.config_fields}
        return model_cls.check_params({**base, **self.params})


def _flag(name: str, flags: set[str]) -> str:
    """An option as the command line spells it: ``--batch-size``, or ``--param NAME=...`` for one
    without a flag of its own (``warmup_epochs``, a model's own parameters)."""
    return f"--{name.replace('_', '-')}" if name in flags else f"--param {name}=..."
