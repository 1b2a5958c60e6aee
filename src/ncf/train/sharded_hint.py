"""What to install for ``--shard-tables`` (importable without TorchRec)."""

INSTALL = ("--shard-tables needs TorchRec and FBGEMM, pinned to torch 2.13: pip install 'ncf[scale]' && "
           "pip install --no-deps torchrec==1.8.0 (fbgemm-gpu-cpu==1.8.0; on CUDA install fbgemm-gpu==1.8.0 "
           "instead); see README, 'Sharded tables'")
