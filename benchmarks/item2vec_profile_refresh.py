"""How much does an item2vec run gain on test when the user profiles include the validation
item (the user's latest interaction before the test item), without retraining the vectors?

    nice python benchmarks/item2vec_profile_refresh.py /tmp/i2v100k

The run's own test figures build profiles from training only (as every model here sees only
training); a served item2vec model can refresh a profile from new interactions for free.
Needs a dataset with timestamps (the validation item is then the latest one).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import scipy.sparse as sp

from ncf.checkpoint import load_config, load_model
from ncf.data.datasets import DataConfig, load_dataset
from ncf.eval.evaluator import evaluate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    args = ap.parse_args()
    ds = load_dataset(DataConfig(**load_config(args.run)["data"]))
    model = load_model(args.run)
    tr = ds.train
    if tr.timestamps is None or ds.valid is None:
        raise SystemExit("needs timestamps and a validation holdout")
    seen = ds.seen(include_valid=True)
    out = {"train-only profiles": {"sampled": evaluate(model, ds.test, "sampled"),
                                   "full": evaluate(model, ds.test, "full", seen=seen)}}
    rows = np.repeat(np.arange(tr.n_users), np.diff(tr.matrix.indptr))
    users = np.concatenate([rows, ds.valid.users])
    items = np.concatenate([tr.matrix.indices, ds.valid.items])
    times = np.concatenate([tr.timestamps, np.full(len(ds.valid), tr.timestamps.max() + 1)])
    order = np.lexsort((items, users))  # CSR order, so that times align with the matrix
    matrix = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=tr.matrix.shape)
    assert np.array_equal(matrix.indices, items[order])
    model.set_profiles(matrix, times[order])
    out["profiles with the validation item"] = {"sampled": evaluate(model, ds.test, "sampled"),
                                                "full": evaluate(model, ds.test, "full", seen=seen)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
