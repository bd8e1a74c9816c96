"""Multi-process start-up: jax.distributed from explicit flags, or auto-detected clusters."""

import jax
from absl import logging


def initialize(coordinator_address: str | None, num_processes: int, process_id: int, auto: bool) -> None:
    """Must run before any other JAX call. No-op for a single process without a cluster."""
    if coordinator_address:
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        )
    elif auto:
        # SLURM, TPU VMs, Open MPI: jax detects the cluster from the environment.
        jax.distributed.initialize()
    else:
        return
    logging.info("process %d of %d, %d local devices of %d", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
