"""Neural collaborative filtering for implicit feedback."""

import os as _os

# OpenMP threads that spin while they wait for each other cost 20-60x the work on a machine
# whose cores are shared (measured in docs/RESULTS.md, "Training speed"); sleeping waits cost
# little at the batch sizes used here. Only takes effect if torch is not imported yet, and
# never overrides a value the user set.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
