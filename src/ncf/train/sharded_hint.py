"""What to install for ``--shard-tables`` (importable without TorchRec)."""

INSTALL = ("--shard-tables needs TorchRec and FBGEMM, pinned to this torch: pip install 'ncf[scale]' "
           "(torchrec==1.8.0 and fbgemm-gpu-cpu==1.8.0 for torch 2.13; on CUDA fbgemm-gpu==1.8.0 instead); "
           "see README, 'Sharded tables'")
