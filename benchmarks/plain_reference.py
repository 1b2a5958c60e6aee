"""Plain-PyTorch NeuMF training steps, the reference that ``train_speed.py`` compares ncf with.

Runs in its own process with PyTorch's own defaults: it imports neither ncf nor anything that
sets threading variables (``import ncf`` sets ``OMP_WAIT_POLICY=PASSIVE``, which made this
reference about 3x slower when it ran inside the benchmark's process). Prints one JSON line:

    python benchmarks/plain_reference.py --users 6040 --items 3706 --batch 256 --steps 400
    -> {"batch": 256, "steps": 400, "samples_per_s": ..., "threads": 2, "omp_wait_policy": null}

Model math only: batches of random ids are drawn before the clock starts (no negative sampling,
no validation), Adam at lr 0.001, log loss, the paper's 8 factors and 64-32-16-8 tower.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from torch import nn


class PlainNeuMF(nn.Module):
    """NeuMF as a tutorial writes it: four nn.Embedding, concatenation, nn.Linear + ReLU."""

    def __init__(self, n_users: int, n_items: int, factors: int = 8, layers=(64, 32, 16, 8)):
        super().__init__()
        self.gu, self.gi = nn.Embedding(n_users, factors), nn.Embedding(n_items, factors)
        self.mu, self.mi = nn.Embedding(n_users, layers[0] // 2), nn.Embedding(n_items, layers[0] // 2)
        self.mlp = nn.Sequential(*[m for a, b in zip(layers[:-1], layers[1:], strict=True)
                                   for m in (nn.Linear(a, b), nn.ReLU())])
        self.out = nn.Linear(factors + layers[-1], 1)

    def forward(self, u, i):
        g = self.gu(u) * self.gi(i)
        m = self.mlp(torch.cat([self.mu(u), self.mi(i)], dim=-1))
        return self.out(torch.cat([g, m], dim=-1)).squeeze(-1)


def rate(n_users: int, n_items: int, device: torch.device, steps: int, batch: int) -> float:
    """Samples/s of ``steps`` training steps at ``batch`` (after a warm-up of a tenth)."""
    torch.manual_seed(0)
    model = PlainNeuMF(n_users, n_items).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=0.001)
    loss_fn = nn.BCEWithLogitsLoss()
    warm = max(5, steps // 10)
    u = torch.randint(0, n_users, (steps + warm, batch), device=device)
    i = torch.randint(0, n_items, (steps + warm, batch), device=device)
    y = (torch.rand(steps + warm, batch, device=device) < 0.2).float()

    def step(k):
        loss = loss_fn(model(u[k], i[k]), y[k])
        opt.zero_grad()
        loss.backward()
        opt.step()

    for k in range(warm):
        step(k)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for k in range(warm, warm + steps):
        step(k)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--items", type=int, required=True)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    r = rate(args.users, args.items, torch.device(args.device), args.steps, args.batch)
    print(json.dumps({"batch": args.batch, "steps": args.steps, "samples_per_s": r,
                      "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}))


if __name__ == "__main__":
    main()
