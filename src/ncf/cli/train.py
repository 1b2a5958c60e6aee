"""``ncf train``, ``ncf evaluate``, ``ncf recommend``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ncf.cli import app
from ncf.cli.common import DataDirOpt, JsonOpt, data_config, print_json, run_dir
from ncf.config import TrainConfig


def _parse_params(items: list[str] | None) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--param expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


@app.command("train")
def train_cmd(
    dataset: str = typer.Option(None, "--dataset", help="Dataset name or ratings file."),
    model: str = typer.Option("neumf", "--model", help="gmf | mlp | neumf | ..."),
    out: Path = typer.Option(None, "--out", help="Run directory to write."),
    resume: Path = typer.Option(None, "--resume", help="Continue an interrupted run directory."),
    factors: int = typer.Option(TrainConfig.factors, "--factors"),
    layers: str = typer.Option("64,32,16,8", "--layers", help="MLP tower, first = concatenated embedding size."),
    epochs: int = typer.Option(TrainConfig.epochs, "--epochs"),
    neg: int = typer.Option(TrainConfig.neg, "--neg", help="Negatives per positive, per epoch."),
    batch_size: int = typer.Option(TrainConfig.batch_size, "--batch-size", help="0: auto from the data size."),
    lr: float = typer.Option(TrainConfig.lr, "--lr", help="0: auto (scaled with the batch)."),
    optimizer: str = typer.Option(TrainConfig.optimizer, "--optimizer", help="adam | sgd | adagrad"),
    loss: str = typer.Option(None, "--loss", help="bce (log loss) | bpr (pairwise); default: the model's own "
                             "(bpr for --model bpr, else bce)"),
    l2: float = typer.Option(TrainConfig.l2, "--l2", help="L2 penalty on the batch's embeddings."),
    dropout: float = typer.Option(TrainConfig.dropout, "--dropout"),
    patience: int = typer.Option(TrainConfig.patience, "--patience", help="Early-stop patience (0: off)."),
    seed: int = typer.Option(TrainConfig.seed, "--seed"),
    device: str = typer.Option(TrainConfig.device, "--device", help="auto | cpu | cuda"),
    threads: int = typer.Option(0, "--threads", help="CPU threads (0: all cores)."),
    sparse: str = typer.Option(TrainConfig.sparse, "--sparse", help="Sparse row updates of the embedding tables: "
                               "auto (CPU, tables larger than a batch and 100k+ rows) | on | off."),
    pretrain: bool = typer.Option(False, "--pretrain", help="NeuMF: pre-train GMF and MLP, then fuse."),
    alpha: float = typer.Option(0.5, "--alpha", help="Weight of GMF when fusing pre-trained models."),
    finetune_optimizer: str = typer.Option(TrainConfig.finetune_optimizer, "--finetune-optimizer",
                                           help="--pretrain: optimizer of the fused model's fine-tuning."),
    finetune_lr: float = typer.Option(TrainConfig.finetune_lr, "--finetune-lr",
                                      help="--pretrain: learning rate of the fine-tuning (0: --lr)."),
    pretrained_gmf: Path = typer.Option(None, "--pretrained-gmf", help="--pretrain: fuse this finished GMF run "
                                        "instead of training one (same dataset and split)."),
    pretrained_mlp: Path = typer.Option(None, "--pretrained-mlp", help="--pretrain: fuse this finished MLP run "
                                        "instead of training one."),
    param: list[str] = typer.Option(None, "--param", help="Model-specific KEY=VALUE (repeatable)."),
    user_features: Path = typer.Option(None, "--user-features", help="widedeep: user feature CSV (id, features)."),
    item_features: Path = typer.Option(None, "--item-features", help="widedeep: item feature CSV (id, features)."),
    init_items: Path = typer.Option(None, "--init-items", help="gmf/neumf: initialise item embeddings from "
                                    "this run's item vectors (item2vec), matched by raw item id."),
    data_dir: str = DataDirOpt,
    no_valid: bool = typer.Option(False, "--no-valid", help="No validation holdout (no early stopping)."),
    min_rating: float = typer.Option(None, "--min-rating"),
    user_col: str = typer.Option(None, "--user-col"),
    item_col: str = typer.Option(None, "--item-col"),
    rating_col: str = typer.Option(None, "--rating-col"),
    time_col: str = typer.Option(None, "--time-col"),
    sep: str = typer.Option(None, "--sep"),
    on_bad_lines: str = typer.Option("error", "--on-bad-lines"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    nproc: int = typer.Option(1, "--nproc", help="Data-parallel processes (DDP, launched through torchrun)."),
):
    """Train a model and write a run directory (config, weights, id maps, metrics, plot)."""
    from ncf.train.run import resume_run, train

    if nproc != 1:
        from ncf.train.distributed import relaunch

        raise typer.Exit(relaunch(nproc))
    if resume is not None:
        if init_items is not None:
            raise ValueError("--init-items applies to a new run, not to --resume")
        summary = resume_run(resume, progress=not quiet)
        if summary is not None:  # None: a non-zero rank of a distributed run (rank 0 reports)
            _print_summary(summary)
        return
    if dataset is None or out is None:
        raise ValueError("ncf train needs --dataset SOURCE and --out DIR (or --resume DIR)")
    if loss is None:  # an explicit --loss always wins; else the model's default (BPR-MF: bpr)
        from ncf.models import get_model_class

        loss = getattr(get_model_class(model), "default_loss", TrainConfig.loss)
    cfg = TrainConfig(model=model, factors=factors, layers=layers, epochs=epochs, neg=neg,
                      batch_size=batch_size, lr=lr, optimizer=optimizer, loss=loss, l2=l2,
                      dropout=dropout, patience=patience, seed=seed, device=device, threads=threads,
                      sparse=sparse, pretrain=pretrain or bool(pretrained_gmf or pretrained_mlp), alpha=alpha,
                      finetune_optimizer=finetune_optimizer, finetune_lr=finetune_lr,
                      pretrained_gmf=str(pretrained_gmf.resolve()) if pretrained_gmf else "",
                      pretrained_mlp=str(pretrained_mlp.resolve()) if pretrained_mlp else "",
                      params={**_parse_params(param), **{k: str(v) for k, v in (
                          ("user_features", user_features), ("item_features", item_features)) if v}})
    dcfg = data_config(dataset, data_dir, valid=not no_valid, seed=seed, min_rating=min_rating,
                       user_col=user_col, item_col=item_col, rating_col=rating_col, time_col=time_col,
                       sep=sep, on_bad_lines=on_bad_lines)
    summary = train(dcfg, cfg, out, progress=not quiet, init_items=init_items)
    if summary is not None:  # None: a non-zero rank of a distributed run (rank 0 reports)
        _print_summary(summary)
        typer.echo(f"run written to {out}")


def _print_summary(s: dict) -> None:
    t = Table(title=f"{s['model']} on {s['dataset']}: best epoch {s['best_epoch']}")
    t.add_column("split")
    for k in ("hr@10", "ndcg@10"):
        t.add_column(k, justify="right")
    for name in ("valid", "test", "test_full"):
        if s.get(name):
            t.add_row(name, *(f"{s[name][k]:.4f}" for k in ("hr@10", "ndcg@10")))
    Console(stderr=True).print(t)
    Console(stderr=True).print(f"train seconds: {s['train_seconds']:.1f}")


@app.command("evaluate")
def evaluate_cmd(
    directory: Path = typer.Argument(..., help="Run directory."),
    protocol: str = typer.Option("sampled", "--protocol", help="sampled (1 + 99 negatives) | full | topk "
                                 "(recall/precision/MAP/MRR/NDCG@k with all of a user's held-out items, coverage)"),
    k: list[int] = typer.Option([10], "-k", help="Cut-offs (repeatable)."),
    split: str = typer.Option("test", "--split", help="test | valid"),
    json_out: bool = JsonOpt,
):
    """Evaluate a trained run on its dataset's held-out items."""
    from ncf.checkpoint import load_config, load_model
    from ncf.data.datasets import DataConfig, load_dataset
    from ncf.eval.evaluator import evaluate

    run_dir(directory)
    if any(x < 1 for x in k):
        raise ValueError("-k must be >= 1")
    cfg = load_config(directory)
    model = load_model(directory)
    ds = load_dataset(DataConfig(**cfg["data"]))
    if (ds.n_users, ds.n_items) != (model.n_users, model.n_items):
        raise ValueError(f"{directory}: the dataset now has {ds.n_users} users / {ds.n_items} items, "
                         f"the model {model.n_users} / {model.n_items}")
    holdout = ds.test if split == "test" else ds.valid
    if holdout is None:
        raise ValueError(f"the run has no {split} holdout")
    seen = ds.seen(include_valid=split == "test")
    if protocol == "topk":
        from ncf.eval.topk import evaluate_topk

        res = {m: v for kk in k for m, v in evaluate_topk(model, holdout, seen, kk).items()}
    else:
        res = evaluate(model, holdout, protocol, seen=seen, ks=tuple(k))
    out = {"run": str(directory), "protocol": protocol, "split": split, "metrics": res}
    if json_out:
        print_json(out)
        return
    t = Table(title=f"{directory} ({protocol}, {split})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for m, v in res.items():
        t.add_row(m, f"{v:.4f}")
    Console().print(t)


@app.command("recommend")
def recommend_cmd(
    directory: Path = typer.Argument(..., help="Run directory."),
    user: str = typer.Option(None, "--user", help="Raw user id."),
    features: str = typer.Option(None, "--features", help="A new user's features instead of --user "
                                 "(widedeep runs), e.g. age=25,gender=F,occupation=artist."),
    k: int = typer.Option(10, "-k", help="Number of items."),
    include_seen: bool = typer.Option(False, "--include-seen", help="Do not exclude seen items."),
    json_out: bool = JsonOpt,
):
    """Top-k items for a user (raw ids in and out). Unknown users get popular items."""
    from ncf.serve.recommender import Recommender

    run_dir(directory)
    if k < 1:
        raise ValueError(f"-k must be >= 1, got {k}")
    if (user is None) == (features is None):
        raise ValueError("ncf recommend needs exactly one of --user ID and --features NAME=VALUE,...")
    rec = Recommender.from_run(directory)
    if features is not None:
        from ncf.data.features import parse_feature_spec

        r = rec.recommend_features(parse_feature_spec(features), k)
    else:
        raw = rec.user_map.raw(rec.user_map.get(user)) if rec.user_map.get(user) is not None else user
        r = rec.recommend(raw, k, exclude_seen=not include_seen)
    if json_out:
        print_json(r.to_dict())
        return
    t = Table(title=f"user {r.user}" + (" (unknown: most popular items)" if r.fallback else ""))
    t.add_column("#", justify="right")
    t.add_column("item")
    t.add_column("title")
    t.add_column("score", justify="right")
    for n, it in enumerate(r.items, 1):
        idx = rec.item_map.index(it["item"])
        t.add_row(str(n), str(it["item"]), rec.title(idx) or "", f"{it['score']:.4f}")
    Console().print(t)
