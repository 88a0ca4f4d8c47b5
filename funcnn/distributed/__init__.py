"""Scale-out on JAX's own runtime: a data-parallel mesh (`jax.sharding`), several
processes (`jax.distributed`), and the command-line flags for both.

- `funcnn.distributed.mesh`: `make_mesh`, `data_parallel`, `shard_batch`, `replicate`.
- `funcnn.distributed.launch`: `initialize_distributed`.
- `funcnn.distributed.cli`: `add_cli_arguments`, `setup_from_args`, `select_devices`.

It imports nothing else of funcnn: the run loop (`funcnn.training`) calls it.
"""

from funcnn.distributed.cli import add_cli_arguments as add_cli_arguments
from funcnn.distributed.cli import select_devices as select_devices
from funcnn.distributed.cli import setup_from_args as setup_from_args
from funcnn.distributed.launch import initialize_distributed as initialize_distributed
from funcnn.distributed.mesh import any_process as any_process
from funcnn.distributed.mesh import batch_sharding as batch_sharding
from funcnn.distributed.mesh import check_batch as check_batch
from funcnn.distributed.mesh import data_parallel as data_parallel
from funcnn.distributed.mesh import make_mesh as make_mesh
from funcnn.distributed.mesh import process_local_batch as process_local_batch
from funcnn.distributed.mesh import replicate as replicate
from funcnn.distributed.mesh import replicated_sharding as replicated_sharding
from funcnn.distributed.mesh import shard_batch as shard_batch
