"""Adversarial cases (issue 20): bad files, misused flags and interrupted runs.

Each test reproduces a defect found by trying the library as an adversarial user would; it
failed before the fix. Organised by what is attacked, so that the module can grow:

- :class:`TestFiles`: ratings files (headers, ids, compression, malformed rows) and run files
  (``config.json``, features);
- :class:`TestCLI`: flags that conflict, or name a file where a directory is expected;
- :class:`TestTrainingRuns`: what a run directory holds after an overwrite, a failure, a resume.

The HTTP service and kill/restart of the store are in ``tests/serve/test_adversarial_serve.py``.
All data here is synthetic and small (a few seconds per test).
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest
import torch

from ncf.checkpoint import CheckpointError, load_model
from ncf.cli import main
from ncf.config import TrainConfig
from ncf.data.datasets import DataConfig, load_dataset
from ncf.data.readers import DataError, read_table
from ncf.train.run import partial_dir, resume_run, train


def _rows(n_users: int = 40, per_user: int = 8, n_items: int = 30, seed: int = 0) -> list[tuple]:
    rnd = random.Random(seed)
    return [(u, i, rnd.randint(1, 5), 1000 + 100 * u + k)
            for u in range(n_users) for k, i in enumerate(rnd.sample(range(n_items), per_user))]


def _csv(path: Path, rows=None, fmt="{u},{i},{r},{t}", header: str | None = None) -> Path:
    lines = ([header] if header else []) + [fmt.format(u=u, i=i, r=r, t=t) for u, i, r, t in (rows or _rows())]
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


TRAIN = ("train", "--model", "gmf", "--epochs", "1", "--batch-size", "256", "--device", "cpu", "--quiet")


def small(**kw) -> TrainConfig:
    return TrainConfig(**{"model": "gmf", "epochs": 1, "batch_size": 256, "lr": 0.01, "device": "cpu",
                          "patience": 0, **kw})


# --- Files ----------------------------------------------------------------------------------


class TestFiles:
    def test_string_id_csv_header_is_detected(self, tmp_path):
        """Case 6: a header over string ids (no column of numbers among the ids) is not an interaction."""
        rows = [(u, i, r, f"2024-01-{1 + t % 28:02d}") for u, i, r, t in _rows()]
        path = _csv(tmp_path / "shop.csv", rows, fmt="c{u},p{i},{r},{t}",
                    header="customer_id,product,rating,purchased_at")
        r = read_table(path)
        assert r.report.header is True
        assert "customer_id" not in set(r.users.tolist()) and len(r) == len(_rows())
        assert len(set(r.users.tolist())) == 40

    def test_string_id_header_without_numbers_anywhere(self, tmp_path):
        """Case 6: only id columns (no rating): the header's names never recur and look like column names."""
        path = _csv(tmp_path / "ids.csv", fmt="c{u},p{i}", header="customer_id,product")
        r = read_table(path)
        assert r.report.header is True and "product" not in set(r.items.tolist())
        na = tmp_path / "na.csv"  # a missing value above numbers is not a column name
        na.write_text("alice,apple,NA\nbob,pear,3\ncarol,fig,4\n")
        assert read_table(na).report.header is False and len(read_table(na)) == 3

    def test_header_flag_forces_either_way(self, tmp_path, capsys):
        """Case 6: --header / --no-header override the detection (the library: header=True/False)."""
        path = _csv(tmp_path / "ids.csv", fmt="c{u},p{i}", header="customer_id,product")
        assert read_table(path, header=False).report.header is False
        assert "customer_id" in set(read_table(path, header=False).users.tolist())
        ds = load_dataset(DataConfig(str(path), header=False))
        assert ds.report["read"]["header"] is False and ds.n_users == 41
        code, out, err = cli(capsys, "data", "info", path, "--header", "--json")
        assert code == 0, err
        assert json.loads(out)["n_users"] == 40

    def test_unused_time_column_is_warned_about(self, tmp_path, capsys):
        """Case 6: a time-like column that the split does not use is said, not silently ignored."""
        path = _csv(tmp_path / "shop.csv", header="customer_id,product,rating,purchased_at")
        r = read_table(path)
        assert any("purchased_at" in w and "--time-col" in w for w in r.report.warnings), r.report.warnings
        r = read_table(path, time_col="purchased_at")
        assert not r.report.warnings
        code, out, err = cli(capsys, "data", "info", path, "--json")
        assert code == 0 and "warning:" in err and "--time-col purchased_at" in err
        assert json.loads(out)["report"]["read"]["warnings"]

    def test_id_beyond_int64_is_a_data_error(self, tmp_path):
        """Case 10: 2^63 among integer ids is not an OverflowError: a DataError naming file:line,
        or with skip a counted bad row; among string ids it is one more string id."""
        body = "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in _rows())
        path = tmp_path / "big.csv"
        path.write_text(body + f"{2**63},1,3,5\n1,2,x,5\n")
        ds = load_dataset(DataConfig(str(path), on_bad_lines="skip", rating_col="2"))
        assert ds.report["read"]["skipped"] == 2 and ds.n_users == 40
        with pytest.raises(DataError, match=r"big.csv:321: .*9223372036854775808.*64-bit"):
            read_table(path)
        ds = load_dataset(DataConfig(str(path), on_bad_lines="skip"))  # the rating not read: one bad row
        assert ds.report["read"]["skipped"] == 1 and ds.report["read"]["skipped_lines"] == [321]
        path.write_text(body.replace("\n", ",\n", 1) + f"{2**63},1,3,5\n")  # the slow pass too
        with pytest.raises(DataError, match=r"big.csv:321: .*64-bit"):
            read_table(path)
        path.write_text("u1,1\nu2,2\n" + f"{2**63},1\n")  # string ids: one more string
        assert str(2**63) in set(read_table(path).users.tolist())

    def test_gzip_file_is_read_transparently(self, tmp_path):
        """Case 10: a .gz ratings file is decompressed, not called "not valid utf-8"."""
        plain = _csv(tmp_path / "r.csv")
        gz = tmp_path / "r.csv.gz"
        gz.write_bytes(gzip.compress(plain.read_bytes()))
        a, b = read_table(plain), read_table(gz)
        assert (a.users == b.users).all() and (a.items == b.items).all()
        (tmp_path / "r.csv.bz2").write_bytes(b"BZh91AY&SY" + b"\0" * 20)
        with pytest.raises(DataError, match="compressed"):
            read_table(tmp_path / "r.csv.bz2")

    @pytest.mark.parametrize("skip", [False, True])
    def test_row_with_an_extra_field_is_malformed(self, tmp_path, skip):
        """Case 12: a row with one more non-empty field than the others is counted as malformed
        (an error naming the line, or skipped and counted); an empty trailing field stays fine."""
        rows = _rows()
        lines = [f"{u},{i},{r},{t}" for u, i, r, t in rows]
        lines[5] += ",junk"
        lines[7] += ","
        path = tmp_path / "extra.csv"
        path.write_text("\n".join(lines) + "\n")
        if not skip:
            with pytest.raises(DataError, match=r"extra.csv:6:.*5 fields"):
                read_table(path, rating_col=2)
        else:
            r = read_table(path, rating_col=2, on_bad_lines="skip")
            assert r.report.skipped == 1 and r.report.skipped_lines == [6] and len(r) == len(rows) - 1

    def test_config_json_unknown_keys_are_errors(self, tmp_path):
        """Case 12: an unknown key at the top level or under "train" of config.json names the file and key."""
        out = tmp_path / "run"
        train(DataConfig(str(_csv(tmp_path / "r.csv"))), small(), out, progress=False)
        cfg = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**cfg, "modle": "gmf"}))
        with pytest.raises(CheckpointError, match=r"config.json.*'modle'"):
            load_model(out)
        cfg["train"]["eopchs"] = 3
        (out / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=r"config.json.*eopchs"):
            resume_run(out, progress=False)

    def test_feature_outside_its_range_is_refused(self):
        """Case 12: age=-5 is refused with the valid range rather than put in the lowest bucket."""
        from ncf.data.features import AGE_EDGES, Field, encode_features

        age = Field("age", "bucket", edges=AGE_EDGES)
        with pytest.raises(ValueError, match=r"age.*-5.*between 0 and"):
            encode_features([age], {"age": "-5"})
        assert encode_features([age], {"age": "25"})[0][0] > 0
        again = Field.from_dict(age.to_dict())
        with pytest.raises(ValueError, match="between 0 and"):
            encode_features([again], {"age": "500"})

    def test_feature_range_travels_with_a_widedeep_run(self, tmp_path):
        """Case 12: what `ncf recommend --features` / the service use: the model loaded from its run."""
        from ncf.checkpoint import save_model
        from ncf.data.features import AGE_EDGES, Field
        from ncf.models.widedeep import WideDeep

        m = WideDeep.from_params(5, 4, factors=2, layers=(4, 2), user_fields=[Field("age", "bucket", edges=AGE_EDGES)],
                                 item_fields=[])
        save_model(tmp_path, m)
        back = load_model(tmp_path)
        with pytest.raises(ValueError, match=r"'age': cannot use '-5'; valid: a number between 0 and 120"):
            back.encode_features({"age": "-5"})
        assert back.encode_features({"age": "30"})[0].item() > 0


# --- CLI ------------------------------------------------------------------------------------


class TestCLI:
    def test_out_naming_a_file_is_a_clear_error(self, tmp_path, capsys):
        """Case 10: --out FILE is one line, not a FileExistsError traceback, and the file is untouched."""
        data = _csv(tmp_path / "r.csv")
        before = data.read_bytes()
        code, _, err = cli(capsys, *TRAIN, "--dataset", data, "--out", data)
        assert code == 2 and "is a file" in err and "Traceback" not in err
        assert data.read_bytes() == before

    def test_resume_refuses_conflicting_flags(self, tmp_path, capsys):
        """Case 11: --resume with flags that would change the run is refused, naming them; --epochs applies."""
        data = _csv(tmp_path / "r.csv")
        out = tmp_path / "run"
        code, _, err = cli(capsys, *TRAIN, "--dataset", data, "--out", out)
        assert code == 0, err
        code, _, err = cli(capsys, "train", "--resume", out, "--lr", "0.5", "--model", "mlp", "--out", tmp_path / "o")
        assert code == 2 and "--lr" in err and "--model" in err and "--out" in err
        assert not (tmp_path / "o").exists()
        code, _, err = cli(capsys, "train", "--resume", out, "--epochs", "3", "--quiet")
        assert code == 0, err
        assert json.loads((out / "summary.json").read_text())["epochs_run"] == 3
        assert json.loads((out / "config.json").read_text())["train"]["epochs"] == 3

    def test_evaluate_refuses_an_unknown_split_and_tables_count_the_candidates(self, tmp_path, capsys):
        """--split bogus is not validation numbers labelled "bogus"; on a 30-item catalogue whose
        users saw 8, a sampled holdout ranks 1 + 22 candidates, not "1 + 99"."""
        out = tmp_path / "run"
        code, _, err = cli(capsys, *TRAIN, "--dataset", _csv(tmp_path / "r.csv"), "--time-col", "3", "--out", out)
        assert code == 0, err
        assert json.loads((out / "summary.json").read_text())["candidates"] == {"valid": "1 + 22", "test": "1 + 22"}
        code, out_text, err = cli(capsys, "evaluate", out, "--split", "bogus")
        assert code == 2 and "--split must be test or valid, got 'bogus'" in err and "bogus" not in out_text
        code, out_text, _ = cli(capsys, "evaluate", out, "--split", "valid")
        assert code == 0 and "sampled: 1 + 22" in out_text and "99" not in out_text

    def test_train_names_the_columns_it_read_when_no_user_repeats(self, tmp_path, capsys):
        """A first column of timestamps under unknown names is read as the user: the error says so."""
        rows = "".join(f"{1000 + n},{n % 5},{n % 7}\n" for n in range(30))
        data = tmp_path / "r.csv"
        data.write_text("when_seen,a,b\n" + rows)
        code, _, err = cli(capsys, *TRAIN, "--dataset", data, "--out", tmp_path / "run")
        assert code == 2 and "no user has" in err and "2 or more interactions" in err
        assert "users read from 'when_seen' (column 0)" in err and "--user-col" in err

    def test_an_option_that_does_not_apply_lists_what_can_be_passed(self, tmp_path, capsys):
        """Flags as typed (--batch-size), and --param NAME=... for the options without a flag."""
        code, _, err = cli(capsys, *TRAIN, "--dataset", _csv(tmp_path / "r.csv"), "--dropout", "0.2",
                           "--out", tmp_path / "run")
        assert code == 2 and "option(s) --dropout do not apply to model 'gmf'" in err
        assert "--batch-size" in err and "--param warmup_epochs=..." in err
        assert " warmup_epochs," not in err and " workers," not in err

    def test_help_lists_commands_as_a_user_works_and_train_options_in_panels(self, capsys):
        import re

        code, out, _ = cli(capsys, "--help")
        shown = [m.group(1) for m in re.finditer(r"(?m)^│ ([a-z][a-z-]*)\s", out)]
        workflow = ["data", "train", "evaluate", "recommend", "similar", "tune", "compare", "serve", "export"]
        assert code == 0 and [c for c in shown if c in workflow] == workflow, shown
        code, out, _ = cli(capsys, "train", "--help")
        panels = re.findall(r"╭─ ([A-Za-z -]+?) ─", out)
        assert code == 0 and panels[1:] == ["Data", "Model", "NeuMF pre-training", "Training", "Several processes",
                                            "Output"], panels
        data, model = out.index("╭─ Data"), out.index("╭─ Model")
        assert data < out.index("--time-col") < model and out.index("--epochs") > out.index("╭─ Training")

    def test_tune_with_ensemble_alone_says_what_ensemble_needs(self, tmp_path, capsys):
        for models in ("ensemble", "ease,ensemble"):
            code, _, err = cli(capsys, "tune", "--dataset", _csv(tmp_path / "r.csv"), "--time-budget", "5",
                               "--out", tmp_path / "t", "--models", models)
            assert code == 2 and "at least two other models" in err and "time-budget" not in err

    def test_resume_of_a_corrupt_state_does_not_offer_resume_again(self, tmp_path, capsys):
        out = tmp_path / "run"
        code, _, err = cli(capsys, *TRAIN, "--dataset", _csv(tmp_path / "r.csv"), "--out", out)
        assert code == 0, err
        part = partial_dir(out)
        out.rename(part)  # as an interrupted run leaves it, with its state file damaged
        (part / "summary.json").unlink()
        (part / "state.safetensors").write_bytes(b"garbage")
        code, out_text, err = cli(capsys, "train", "--resume", out)
        assert code == 2 and "state.safetensors" in err
        assert f"--resume {out} continues" not in out_text + err and "cannot continue it" in out_text + err


# --- Training runs -------------------------------------------------------------------------


class TestTrainingRuns:
    def test_existing_run_is_not_overwritten(self, tmp_path, capsys):
        """Case 2: a finished run is kept unless --overwrite; then it is replaced whole."""
        data = _csv(tmp_path / "r.csv")
        out = tmp_path / "run"
        assert cli(capsys, *TRAIN, "--dataset", data, "--out", out)[0] == 0
        before = (out / "model.safetensors").read_bytes()
        code, _, err = cli(capsys, *TRAIN, "--dataset", data, "--out", out, "--model", "mlp")
        assert code == 2 and "--overwrite" in err
        assert (out / "model.safetensors").read_bytes() == before
        assert json.loads((out / "config.json").read_text())["model"] == "gmf"
        code, _, err = cli(capsys, *TRAIN, "--dataset", data, "--out", out, "--model", "mlp", "--overwrite")
        assert code == 0, err
        assert json.loads((out / "config.json").read_text())["model"] == "mlp"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "run"]

    def test_library_refuses_overwrite_too(self, tmp_path):
        """Case 2: ncf.train.run.train(out=...) over a run directory needs overwrite=True."""
        dcfg = DataConfig(str(_csv(tmp_path / "r.csv")))
        train(dcfg, small(), tmp_path / "run", progress=False)
        with pytest.raises(FileExistsError, match="overwrite"):
            train(dcfg, small(model="mlp"), tmp_path / "run", progress=False)
        train(dcfg, small(model="mlp"), tmp_path / "run", progress=False, overwrite=True)
        assert load_model(tmp_path / "run").name == "mlp"
        (tmp_path / "empty").mkdir()  # an empty directory is fine
        train(dcfg, small(), tmp_path / "empty", progress=False)

    def test_pretrain_over_an_old_run_does_not_reuse_mismatched_subruns(self, tmp_path):
        """Case 3: --pretrain with other --factors (or other data) into a directory holding
        pretrain-* sub-runs: never fused unchecked."""
        dcfg = DataConfig(str(_csv(tmp_path / "r.csv")))
        out = tmp_path / "n"
        cfg = small(model="neumf", pretrain=True, factors=8, layers="16,8")
        train(dcfg, cfg, out, progress=False)
        train(dcfg, small(model="neumf", pretrain=True, factors=16, layers="32,16"), out, progress=False,
              overwrite=True)
        assert load_model(out / "pretrain-gmf").hparams()["factors"] == 16
        assert load_model(out).hparams()["factors"] == 16

    def test_resume_checks_found_pretrain_subruns(self, tmp_path):
        """Case 3: an interrupted --pretrain run whose pretrain-gmf was trained on other data (or
        with other factors) is refused on resume with a clear message, not fused."""
        dcfg = DataConfig(str(_csv(tmp_path / "r.csv")))
        other = DataConfig(str(_csv(tmp_path / "o.csv", rows=_rows(n_users=30, seed=1))))
        out = tmp_path / "n"
        train(dcfg, small(model="neumf", pretrain=True, layers="16,8"), out, progress=False)
        import shutil

        shutil.rmtree(out / "pretrain-gmf")
        train(other, small(), out / "pretrain-gmf", progress=False)
        (out / "summary.json").unlink()
        with pytest.raises(CheckpointError, match=r"pretrain-gmf.*(ids differ|interactions)"):
            resume_run(out, progress=False)
        shutil.rmtree(out / "pretrain-gmf")
        train(dcfg, small(factors=4), out / "pretrain-gmf", progress=False)
        with pytest.raises(CheckpointError, match=r"pretrain-gmf.*factors"):
            resume_run(out, progress=False)

    def test_failed_training_leaves_no_directory(self, tmp_path, capsys):
        """Case 5: every user with one interaction is refused before anything is written."""
        path = tmp_path / "one.csv"
        path.write_text("".join(f"{u},{u % 5}\n" for u in range(20)))
        out = tmp_path / "run"
        code, _, err = cli(capsys, *TRAIN, "--dataset", path, "--out", out)
        assert code == 2 and "interaction" in err and "Traceback" not in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv"]

    @pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
    def test_cuda_without_gpu_leaves_no_directory(self, tmp_path, capsys):
        data = _csv(tmp_path / "r.csv")
        code, _, err = cli(capsys, *TRAIN, "--dataset", data, "--out", tmp_path / "run", "--device", "cuda")
        assert code == 2 and "CUDA" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]

    def test_crash_mid_training_keeps_only_resumable_state(self, tmp_path, monkeypatch):
        """Case 5: an error after some epochs leaves no DIR; the resumable state waits in the
        partial sibling, and --resume DIR finishes the run and puts it in place."""
        from ncf.train import trainer as trainer_mod

        dcfg = DataConfig(str(_csv(tmp_path / "r.csv")))
        out = tmp_path / "run"
        real = trainer_mod.Trainer.save_state

        def crash_after_2(self, epoch):
            real(self, epoch)
            if epoch == 2:
                raise KeyboardInterrupt

        monkeypatch.setattr(trainer_mod.Trainer, "save_state", crash_after_2)
        with pytest.raises(KeyboardInterrupt):
            train(dcfg, small(epochs=4), out, progress=False)
        monkeypatch.setattr(trainer_mod.Trainer, "save_state", real)
        assert not out.exists() and (partial_dir(out) / "state.safetensors").exists()
        with pytest.raises(FileExistsError, match="--resume"):
            train(dcfg, small(epochs=4), out, progress=False)
        s = resume_run(out, progress=False)
        assert s["epochs_run"] == 4 and (out / "summary.json").exists() and not partial_dir(out).exists()
        straight = train(dcfg, small(epochs=4), tmp_path / "straight", progress=False)
        assert s["test"] == pytest.approx(straight["test"])

    def test_failure_of_an_overwrite_keeps_the_old_run(self, tmp_path, monkeypatch):
        """Case 5 + 2: --overwrite replaces the old run only once the new one is complete."""
        from ncf.train import trainer as trainer_mod

        dcfg = DataConfig(str(_csv(tmp_path / "r.csv")))
        out = tmp_path / "run"
        train(dcfg, small(), out, progress=False)
        before = (out / "model.safetensors").read_bytes()

        def boom(self):
            raise RuntimeError("evaluation failed")

        monkeypatch.setattr(trainer_mod.Trainer, "finish", boom)
        with pytest.raises(RuntimeError):
            train(dcfg, small(model="mlp"), out, progress=False, overwrite=True)
        assert (out / "model.safetensors").read_bytes() == before and (out / "summary.json").exists()

    def test_interrupted_pretrain_run_resumes_from_its_partial_directory(self, tmp_path, monkeypatch):
        """Case 5 + 3: a --pretrain run stopped while fine-tuning keeps its finished sub-runs and its
        state; resume (here given the partial directory's own path) checks the sub-runs, finishes
        and puts the run in place."""
        from ncf.train import trainer as trainer_mod

        dcfg = DataConfig(str(_csv(tmp_path / "r.csv")))
        out = tmp_path / "n"
        real = trainer_mod.Trainer.save_state

        def crash_in_finetuning(self, epoch):
            real(self, epoch)
            if self.model.name == "neumf":
                raise KeyboardInterrupt

        monkeypatch.setattr(trainer_mod.Trainer, "save_state", crash_in_finetuning)
        with pytest.raises(KeyboardInterrupt):
            train(dcfg, small(model="neumf", pretrain=True, layers="16,8", epochs=2), out, progress=False)
        monkeypatch.setattr(trainer_mod.Trainer, "save_state", real)
        part = partial_dir(out)
        assert not out.exists() and (part / "pretrain-gmf" / "summary.json").exists()
        assert (part / "pretrain-mlp" / "summary.json").exists() and (part / "state.safetensors").exists()
        s = resume_run(part, progress=False)
        assert s["epochs_run"] == 2 and (out / "summary.json").exists() and not part.exists()
