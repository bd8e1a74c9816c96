"""The train state: everything a checkpoint must hold to resume exactly."""

from typing import Any

import flax
import jax
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # number of optimizer updates applied; the source of truth for resuming
    params: Any
    opt_state: optax.OptState
    ema_params: Any  # None when EMA is off
    rng: jax.Array  # typed key; each step folds in `step`
    # Auxiliary state a task trains or tracks beside its parameters (e.g. a GAN discriminator with
    # its optimizer and LeCam EMAs); None for tasks without `init_task_state`. Not exported.
    task_state: Any = None
