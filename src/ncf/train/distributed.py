"""Data-parallel training on PyTorch's own engine: DistributedDataParallel under torchrun.

``torchrun --nproc-per-node N -m ncf train ...`` (or ``ncf train --nproc N``, which
launches the same through ``torch.distributed.run``) starts N processes; each joins the
process group (gloo on CPU, NCCL on GPU) from the environment torchrun sets (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Every rank builds the same epoch plan
and trains on its own slice of each global batch (see ``NegativeSampler.batches``); DDP
averages the gradients, and each rank's loss is weighted so that the average is the
gradient of the mean loss over the global batch. Rank 0 alone evaluates, logs and writes
the run directory. See docs/DISTRIBUTED.md.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from ncf.errors import ConfigError


def env_world() -> int:
    """The world size torchrun announced (1 outside torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if env_world() > 1 else 0


def world() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return env_world()


def is_main() -> bool:
    """True in the process that evaluates, logs and writes files (rank 0)."""
    return rank() == 0


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started this process."""
    return env_world() > 1 or all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def setup(device: torch.device, timeout_s: float = 1800) -> torch.device:
    """Join the process group torchrun described (a one-process torchrun run too, so that
    ``--nproc-per-node 1`` exercises DDP; nothing outside torchrun). Returns the device this
    rank trains on (``cuda:LOCAL_RANK`` on GPU)."""
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return device
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={env_world()} but {', '.join(missing)} not set: start distributed "
                         "training with torchrun or `ncf train --nproc N`")
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s) here")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                            **({"device_id": device} if backend == "nccl" else {}))
    atexit.register(cleanup)
    return device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            try:  # leave together: a rank tearing its group down while another still uses it can abort
                dist.barrier()
            except Exception:  # noqa: BLE001 - another rank already failed: torchrun stops this one anyway
                pass
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when a process group is up, else itself."""
    if not (dist.is_available() and dist.is_initialized()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (``x`` itself for one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
    return x


def array_all_sum(device: torch.device):
    """``f(x)``: the sum over ranks of the int64 NumPy vector ``x`` (through ``device``: NCCL
    reduces device tensors); what :func:`ncf.data.rankload.load_rank_dataset` agrees with."""
    def f(x):
        return all_sum(torch.from_numpy(x).to(device)).cpu().numpy()
    return f


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (used for the early-stopping decision)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def launch_command(nproc: int, args: list[str], nnodes: int = 1) -> list[str]:
    """The torchrun command line that runs ``ncf <args>`` on ``nproc`` local processes."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    rdzv = ["--standalone"] if nnodes == 1 else []
    return [sys.executable, "-m", "torch.distributed.run", *rdzv, f"--nproc-per-node={nproc}",
            "-m", "ncf", *args]


def launch(nproc: int, args: list[str]) -> int:
    """Run ``ncf <args>`` under torchrun with ``nproc`` processes; returns the exit status."""
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:  # share the cores between the ranks instead of oversubscribing
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    return subprocess.call(launch_command(nproc, args), env=env)


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less its ``--nproc N`` / ``--nproc=N`` (what each torchrun worker runs)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def relaunch(nproc: int, argv: list[str] | None = None) -> int:
    """``ncf train --nproc N ...``: run this process's command line again under torchrun."""
    if world() > 1:
        raise ConfigError("--nproc inside a distributed run: start either torchrun or `ncf train --nproc N`")
    return launch(nproc, without_nproc(sys.argv[1:] if argv is None else argv))
