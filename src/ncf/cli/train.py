"""``ncf train``, ``ncf evaluate``, ``ncf recommend``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from typer.core import TyperCommand

from ncf.cli.app import app
from ncf.cli.common import (
    DataDirOpt,
    ItemColOpt,
    JsonOpt,
    LayoutOpt,
    MinRatingOpt,
    OnBadLinesOpt,
    RatingColOpt,
    SepOpt,
    TestFileOpt,
    TimeColOpt,
    TrainFileOpt,
    UserColOpt,
    ValidFileOpt,
    ValidRatioOpt,
    data_config,
    parse_ks,
    print_json,
    run_dir,
)
from ncf.config import TrainConfig
from ncf.console import console, tables
from ncf.errors import CheckpointError, ConfigError


def _parse_params(items: list[str] | None) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"--param expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


RESUME_FLAGS = ("resume", "epochs", "patience", "quiet", "json_out", "nproc")  # what --resume takes


def _given(ctx: typer.Context, names) -> list[str]:
    """The options of ``names`` given on the command line (or by environment), as spelled there."""
    out = []
    for p in ctx.command.params:
        src = ctx.get_parameter_source(p.name) if p.name in names else None
        if src is not None and src.name in ("COMMANDLINE", "ENVIRONMENT"):
            flag = p.opts[0]
            if getattr(p, "secondary_opts", None) and ctx.params.get(p.name) is False:
                flag = p.secondary_opts[0]
            out.append(flag)
    return out


class _PanelOrder(TyperCommand):
    """``--help`` shows the panels in :data:`TRAIN_PANELS` order (typer: by each panel's first option)."""

    def format_help(self, ctx, formatter):
        order = [None, *TRAIN_PANELS]
        self.params.sort(key=lambda p: order.index(p.rich_help_panel) if getattr(p, "rich_help_panel", None) in order
                         else 0)
        super().format_help(ctx, formatter)


@app.command("train", cls=_PanelOrder)
def train_cmd(
    ctx: typer.Context,
    dataset: str = typer.Option(None, "--dataset", help="Dataset name or ratings file."),
    train_file: Path = TrainFileOpt,
    test_file: Path = TestFileOpt,
    valid_file: Path = ValidFileOpt,
    layout: str = LayoutOpt,
    valid_ratio: float = ValidRatioOpt,
    split: str = typer.Option(None, "--split", help="How test (and validation) are held out of --dataset: loo "
                              "(default: each user's latest) | temporal | ratio | ratio-time | none (no holdout: "
                              "train on everything, for deployment; no validation, so no early stopping)."),
    model: str = typer.Option("neumf", "--model", help="gmf | mlp | neumf | ..."),
    out: Path = typer.Option(None, "--out", help="Run directory to write (new or empty; see --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace what --out holds (once the new run is "
                                   "complete; a failed run keeps the old one)."),
    resume: Path = typer.Option(None, "--resume", help="Continue an interrupted run directory (takes --epochs, "
                                "--patience, --quiet, --json, --nproc; the rest is the run's own config)."),
    factors: int = typer.Option(None, "--factors", help=f"Embedding size (default {TrainConfig.factors})."),
    layers: str = typer.Option(None, "--layers", help="MLP tower, first = concatenated embedding size "
                                "(default 64,32,16,8)."),
    epochs: int = typer.Option(None, "--epochs", help=f"Epochs (default {TrainConfig.epochs})."),
    neg: int = typer.Option(None, "--neg", help=f"Negatives per positive, per epoch (default {TrainConfig.neg})."),
    batch_size: int = typer.Option(None, "--batch-size", help="Default 0: auto from the data size."),
    lr: float = typer.Option(None, "--lr", help="Default 0: auto (scaled with the batch)."),
    optimizer: str = typer.Option(None, "--optimizer", help="adam (default) | sgd | adagrad"),
    loss: str = typer.Option(None, "--loss", help="bce (log loss) | bpr (pairwise); default: the model's own "
                             "(bpr for --model bpr, else bce)"),
    l2: float = typer.Option(None, "--l2", help="L2 penalty on the batch's embeddings (EASE: its ridge)."),
    dropout: float = typer.Option(None, "--dropout", help=f"MLP tower dropout (default {TrainConfig.dropout})."),
    patience: int = typer.Option(None, "--patience",
                                 help=f"Early-stop patience (0: off; default {TrainConfig.patience})."),
    seed: int = typer.Option(None, "--seed", help="Seed of the split, the sampler and the weights (default 0)."),
    device: str = typer.Option(None, "--device", help="auto (default) | cpu | cuda"),
    threads: int = typer.Option(None, "--threads", help="CPU threads (default 0: all cores)."),
    sparse: str = typer.Option(None, "--sparse", help="Sparse row updates of the embedding tables: "
                               "auto (default; CPU, tables larger than a batch and 100k+ rows) | on | off."),
    pretrain: bool = typer.Option(False, "--pretrain", help="NeuMF: pre-train GMF and MLP, then fuse."),
    alpha: float = typer.Option(None, "--alpha", help="Weight of GMF when fusing pre-trained models (default 0.5)."),
    finetune_optimizer: str = typer.Option(None, "--finetune-optimizer",
                                           help="--pretrain: optimizer of the fused model's fine-tuning."),
    finetune_lr: float = typer.Option(None, "--finetune-lr",
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
    min_rating: float = MinRatingOpt,
    user_col: str = UserColOpt,
    item_col: str = ItemColOpt,
    rating_col: str = RatingColOpt,
    time_col: str = TimeColOpt,
    sep: str = SepOpt,
    header: bool = typer.Option(None, "--header/--no-header", help="The file's first row is a header / is data "
                                "(default: detected)."),
    on_bad_lines: str = OnBadLinesOpt,
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    json_out: bool = typer.Option(False, "--json", help="Print the run's summary as JSON on stdout."),
    nproc: int = typer.Option(1, "--nproc", help="Data-parallel processes (DDP, launched through torchrun)."),
    shard_tables: bool = typer.Option(None, "--shard-tables", help="gmf/mlp/neumf: shard the embedding tables "
                                      "over the ranks with TorchRec (needs ncf[scale]; with --nproc N or torchrun)."),
    sharding: str = typer.Option(None, "--sharding", help="--shard-tables: auto | table_wise | "
                                 "column_wise | row_wise (GPUs)."),
    table_optimizer: str = typer.Option(None, "--table-optimizer",
                                        help="--shard-tables: optimizer fused into the tables: rowwise_adagrad | "
                                        "adagrad | sgd | adam, rowwise_adam (GPUs)."),
    table_lr: float = typer.Option(None, "--table-lr", help="--shard-tables: the tables' "
                                   "learning rate (0: 0.2)."),
):
    """Train a model and write a run directory (config, weights, id maps, metrics, plot)."""
    from ncf.train.run import resume_run, train

    if shard_tables:
        import importlib.util

        if importlib.util.find_spec("torchrec") is None or importlib.util.find_spec("fbgemm_gpu") is None:
            from ncf.train.sharded_hint import INSTALL

            raise ConfigError(INSTALL)
        from ncf.train.distributed import launched, relaunch

        if nproc == 1 and not launched():  # TorchRec needs a process group: a one-rank torchrun run
            raise typer.Exit(relaunch(1))
    if nproc != 1:
        from ncf.train.distributed import relaunch

        raise typer.Exit(relaunch(nproc))
    if resume is not None:
        if init_items is not None:
            raise ConfigError("--init-items applies to a new run, not to --resume")
        conflicts = _given(ctx, {p.name for p in ctx.command.params} - set(RESUME_FLAGS))
        if conflicts:
            raise ConfigError(f"--resume continues {resume} as its config.json says; {', '.join(conflicts)} cannot "
                              "change it (with --resume: --epochs, --patience, --quiet, --json, --nproc). "
                              "A new run: --out DIR without --resume")
        changes = {k: ctx.params[k] for k in ("epochs", "patience") if _given(ctx, {k})}
        summary = _interruptible(resume, lambda: resume_run(resume, progress=not quiet, **changes))
        if summary is not None:  # None: a non-zero rank of a distributed run (rank 0 reports)
            _print_summary(summary, json_out)
        return
    if out is None:
        raise ConfigError("ncf train needs --out DIR (and --dataset SOURCE or --train FILE --test FILE), "
                          "or --resume DIR")
    given = {"factors": factors, "layers": layers, "epochs": epochs, "neg": neg, "batch_size": batch_size,
             "lr": lr, "optimizer": optimizer, "loss": loss, "l2": l2, "dropout": dropout, "patience": patience,
             "seed": seed, "device": device, "threads": threads, "sparse": sparse, "alpha": alpha,
             "finetune_optimizer": finetune_optimizer, "finetune_lr": finetune_lr,
             "shard_tables": shard_tables or None, "sharding": sharding, "table_optimizer": table_optimizer,
             "table_lr": table_lr,
             "pretrain": True if pretrain or pretrained_gmf or pretrained_mlp else None,
             "pretrained_gmf": str(pretrained_gmf.resolve()) if pretrained_gmf else None,
             "pretrained_mlp": str(pretrained_mlp.resolve()) if pretrained_mlp else None,
             **_parse_params(param),
             **{k: str(v) for k, v in (("user_features", user_features), ("item_features", item_features)) if v}}
    # only the options given: each must apply to the model (--dropout for gmf is refused)
    cfg = TrainConfig.for_model(model, {k: v for k, v in given.items() if v is not None},
                                flags={p.name for p in ctx.command.params})
    dcfg = data_config(dataset, data_dir, train_file, test_file, valid_file, layout=layout, valid_ratio=valid_ratio,
                       split=split, valid=not no_valid, seed=cfg.seed, min_rating=min_rating,
                       user_col=user_col, item_col=item_col, rating_col=rating_col, time_col=time_col,
                       sep=sep, header=header, on_bad_lines=on_bad_lines,
                       # --shard-tables: each rank reads only its users, so the split draws per user
                       split_draws="per_user" if cfg.shard_tables else None)
    summary = _interruptible(out, lambda: train(dcfg, cfg, out, progress=not quiet, init_items=init_items,
                                                overwrite=overwrite))
    if summary is not None:  # None: a non-zero rank of a distributed run (rank 0 reports)
        _print_summary(summary, json_out)
        console.print(f"run written to {out}")


# `ncf train --help` in panels, by what an option is about (an option not listed stays under "Options")
TRAIN_PANELS = {
    "Data": ("dataset", "data_dir", "no_valid", "min_rating", "user_col", "item_col", "rating_col", "time_col",
             "sep", "header", "on_bad_lines", "user_features", "item_features"),
    "Model": ("model", "factors", "layers", "dropout", "param", "init_items"),
    "NeuMF pre-training": ("pretrain", "alpha", "finetune_optimizer", "finetune_lr", "pretrained_gmf",
                           "pretrained_mlp"),
    "Training": ("epochs", "neg", "batch_size", "lr", "optimizer", "loss", "l2", "patience", "seed", "device",
                 "threads", "sparse"),
    "Several processes": ("nproc", "shard_tables", "sharding", "table_optimizer", "table_lr"),
    "Output": ("out", "overwrite", "resume", "quiet", "json_out"),
}


def _set_panels(command, panels: dict[str, tuple[str, ...]]) -> None:
    """Put each option of ``command`` in its help panel (typer reads them when it builds the command)."""
    import inspect

    params = inspect.signature(command).parameters
    for panel, names in panels.items():
        for name in names:
            params[name].default.rich_help_panel = panel


_set_panels(train_cmd, TRAIN_PANELS)


def _interruptible(out: Path, run):
    """``run()``; on Ctrl-C say how to continue (every finished epoch is saved), exit 130."""
    try:
        return run()
    except KeyboardInterrupt:
        console.print(f"\ninterrupted: every finished epoch is saved; continue with `ncf train --resume {out}`")
        raise typer.Exit(130) from None


# what each row of the summary is: the protocol of its metrics
SPLIT_LABELS = {"valid": "valid ({} sampled)", "test": "test ({} sampled)", "test_full": "test (full ranking)"}


def _print_summary(s: dict, json_out: bool = False) -> None:
    if json_out:
        print_json(s)
        return
    t = Table(title=f"{s['model']} on {s['dataset']}: best epoch {s['best_epoch']}")
    t.add_column("split (protocol)")
    for k in ("hr@10", "ndcg@10"):
        t.add_column(k, justify="right")
    sizes = s.get("candidates") or {}  # the real number of candidates (fewer than 1 + 99 on a small catalogue)
    for name, label in SPLIT_LABELS.items():
        if s.get(name):
            label = label.format(sizes.get(name, "1 + 99"))
            t.add_row(label, *(f"{s[name][k]:.4f}" for k in ("hr@10", "ndcg@10")))
    if not any(s.get(name) for name in SPLIT_LABELS):
        console.print(f"{s['model']} on {s['dataset']}: no holdout (--split none), so no metrics: the model was "
                      "trained on every interaction")
    else:
        console.print(t)
    if s.get("test_topk"):  # several test items a user: every item ranked, all of the user's test items relevant
        topk = Table(title="test (top-k over every item not trained on)")
        keys = [k for k in ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "precision@20", "coverage@20")
                if k in s["test_topk"]]
        for k in keys:
            topk.add_column(k, justify="right")
        topk.add_row(*(f"{s['test_topk'][k]:.4f}" for k in keys))
        console.print(topk)
    console.print(f"train seconds: {s['train_seconds']:.1f}")


@app.command("convert")
def convert_cmd(directory: Path = typer.Argument(..., help="Run directory of a --shard-tables run.")):
    """Assemble a sharded run's best-epoch shards into model.safetensors (an ordinary run
    directory for evaluate / recommend / serve); needs the tables to fit this machine, not TorchRec."""
    from ncf.train.shardckpt import convert

    model = convert(directory)
    typer.echo(f"{directory}/model.safetensors written ({model.name}, {model.n_users} users, {model.n_items} items)")


@app.command("evaluate")
def evaluate_cmd(
    directory: Path = typer.Argument(..., help="Run directory."),
    protocol: str = typer.Option("sampled", "--protocol", help="sampled (1 + 99 negatives) | full | topk "
                                 "(all items ranked, seen ones left out, every held-out item of a user relevant: "
                                 "recall, capped_recall, ndcg, precision, map, hr, mrr, coverage @k)"),
    k: list[str] = typer.Option(["10"], "-k", help="Cut-offs: -k 10, -k 5,20 or -k 5 -k 20."),
    split: str = typer.Option("test", "--split", help="test | valid"),
    data_dir: str = typer.Option(None, "--data-dir", help="Data directory (default: the one the run was "
                                 "trained from, else $NCF_DATA_DIR, else ~/.cache/ncf)."),
    json_out: bool = JsonOpt,
):
    """Evaluate a trained run on its dataset's held-out items."""
    from ncf.checkpoint import load_config, load_model, training_mismatch
    from ncf.data.datasets import DataConfig, load_dataset
    from ncf.eval.evaluator import evaluate

    run_dir(directory)
    ks = parse_ks(k)
    if split not in ("test", "valid"):
        raise ConfigError(f"--split must be test or valid, got {split!r}")
    cfg = load_config(directory)
    model = load_model(directory)
    data = dict(cfg["data"])
    if data_dir is not None:
        data["data_dir"] = data_dir
    ds = load_dataset(DataConfig(**data))
    if (ds.n_users, ds.n_items) != (model.n_users, model.n_items):
        raise ConfigError(f"{directory}: the dataset now has {ds.n_users} users / {ds.n_items} items, "
                         f"the model {model.n_users} / {model.n_items}")
    differ = training_mismatch(directory, ds.train.matrix)
    if differ:
        raise CheckpointError(f"{directory}: trained on other interactions than its dataset's training split holds "
                              f"now ({differ} differ: another data file, split or seed, or a run of an older ncf "
                              "whose leave-one-out split broke same-second ties otherwise); evaluating it could "
                              "count items it was trained on: train it again")
    holdout = ds.test if split == "test" else ds.valid
    if holdout is None and data.get("split") == "none":
        raise ConfigError(f"{directory} was trained with --split none (on every interaction): there is no held-out "
                          "item to evaluate it on")
    if holdout is None:
        raise ConfigError(f"the run has no {split} holdout")
    seen = ds.seen(include_valid=split == "test")
    res = evaluate(model, holdout, protocol, seen=seen, ks=ks)
    out = {"run": str(directory), "protocol": protocol, "split": split, "metrics": res}
    if json_out:
        print_json(out)
        return
    if protocol == "sampled":
        from ncf.train.run import candidates_label

        protocol = f"sampled: 1 + {candidates_label(holdout).split(' + ', 1)[1]}"
    t = Table(title=f"{directory} ({protocol}, {split})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for m, v in res.items():
        t.add_row(m, f"{v:.4f}")
    tables.print(t)


@app.command("recommend")
def recommend_cmd(
    directory: Path = typer.Argument(..., help="Run directory."),
    user: str = typer.Option(None, "--user", help="Raw user id."),
    features: str = typer.Option(None, "--features", help="A new user's features instead of --user "
                                 "(widedeep runs), e.g. age=25,gender=F,occupation=artist."),
    users: Path = typer.Option(None, "--users", help="Many users at once: a file of raw user ids, one a line, "
                               "or a CSV whose header names a 'user' column (a first line 'user' is that header); "
                               "needs --out."),
    out: Path = typer.Option(None, "--out", help="--users: the table to write, .csv or .parquet by extension, "
                             "columns user, rank, item, score, fallback (a new file; see --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="--users: replace an existing --out file."),
    k: int = typer.Option(10, "-k", help="Number of items."),
    include_seen: bool = typer.Option(False, "--include-seen", help="Do not exclude seen items."),
    json_out: bool = JsonOpt,
):
    """Top-k items for a user (raw ids in and out), or for a file of users (--users FILE --out FILE).
    Unknown users get popular items (marked fallback).

    Example: ncf recommend runs/ials --users users.txt --out recs.parquet -k 20"""
    from ncf.recommend import Recommender

    run_dir(directory)
    if k < 1:
        raise ConfigError(f"-k must be >= 1, got {k}")
    if sum(x is not None for x in (user, features, users)) != 1:
        raise ConfigError("ncf recommend needs exactly one of --user ID and --features NAME=VALUE,... "
                          "(or --users FILE, for many users at once)")
    if (out is not None or overwrite) and users is None:
        raise ConfigError("--out and --overwrite go with --users FILE (one user: --user ID prints its items)")
    if users is not None:
        _recommend_file(directory, users, out, overwrite, k, include_seen, json_out)
        return
    rec = Recommender.from_run(directory)
    if features is not None:
        from ncf.data.features import parse_feature_spec

        r = rec.recommend_features(parse_feature_spec(features), k)
    else:
        r = rec.recommend(_user_id(rec, user), k, filter_seen=not include_seen)
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
    tables.print(t)


def _user_id(rec, text: str):
    """A raw user id typed or read from a file, under the one id rule (ncf.data.ids): " 196 " is
    user 196, known or not; text that is no id of this run's kind is an unknown user all the same."""
    from ncf.data.ids import canonical_id

    try:
        return canonical_id(text, rec.user_map.integer)
    except ValueError:
        return text.strip()


def _recommend_file(directory: Path, users: Path, out: Path | None, overwrite: bool, k: int,
                    include_seen: bool, json_out: bool) -> None:
    """``ncf recommend --users FILE --out FILE``: every user's top k, scored in blocks, written as one table."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ncf.recommend import Recommender, check_table_path, read_user_file, write_table

    if out is None:
        raise ConfigError("--users FILE needs --out FILE (.csv or .parquet) for the table")
    check_table_path(out, overwrite)
    raw = read_user_file(users)
    rec = Recommender.from_run(directory)
    ids = [_user_id(rec, u) for u in raw]
    columns = [TextColumn("[bold]recommending"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as prog:
        task = prog.add_task("users", total=len(ids))
        table = rec.recommend_table(ids, k, filter_seen=not include_seen,
                                    progress=lambda n: prog.advance(task, n))
    cols = table.columns(rec, lists=False)
    write_table({c: cols[c] for c in ("user", "rank", "item", "score", "fallback")}, out, overwrite)
    summary = {"out": str(out), "users": len(ids), "rows": int(table.counts.sum()),
               "fallback_users": int(table.fallback.sum()), "k": k}
    if json_out:
        print_json(summary)
        return
    typer.echo(f"{out}: {summary['rows']} rows for {summary['users']} users ({summary['fallback_users']} unknown "
               "to the model: most popular items, fallback=true)")
