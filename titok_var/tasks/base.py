"""The contract between the generic train/eval loop and a model family.

A task owns its model and losses; the loop owns sharding, state, checkpoints, data and logging.
"""

from typing import Any, Callable, Protocol

import jax
import numpy as np

Metrics = dict[str, jax.Array]


class Task(Protocol):
    config: Any

    def init_params(self, rng: jax.Array) -> Any:
        """Logically boxed parameters (called under jax.eval_shape and inside jit)."""

    def trainable_mask(self) -> Callable[[Any], Any] | None:
        """None to train everything, else params -> bool tree (False leaves are frozen)."""

    def loss_fn(self, params, batch: dict, rng: jax.Array, step: jax.Array) -> tuple[jax.Array, Metrics]:
        """Scalar training loss and metrics (means over the global batch); `step` counts the
        updates already applied (for losses that start or ramp at a given step)."""

    # Optional, for tasks that train something beside their parameters (a GAN discriminator):
    #   init_task_state(rng) -> pytree, replicated and checkpointed with the train state;
    #   loss_fn then takes `task_state` as a fifth argument and returns (loss, (metrics, outputs));
    #   update_task_state(task_state, outputs, batch, rng, step) -> (task_state, metrics) runs
    #   after the gradient of loss_fn, inside the same jitted step.

    def eval_step(self, params, batch: dict) -> tuple[dict, dict]:
        """(sums, preview): sums are added over all eval batches (padded rows masked out);
        preview holds small image tensors of this batch for a grid."""

    def summarize_eval(self, sums: dict) -> dict[str, float]:
        """Scalar metrics from the summed eval outputs (host side)."""

    def preview_rows(self, preview: dict) -> list[np.ndarray]:
        """Rows of images (N, H, W, 3) in [0, 1] for the eval grid."""
