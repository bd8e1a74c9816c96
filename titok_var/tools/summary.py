"""Parameter counts per top-level submodule, from shapes only (nothing is allocated)."""

import jax
import numpy as np

from titok_var import registry
from titok_var.training import state_init


def parameter_counts(config) -> dict[str, int]:
    task = registry.get_task(config)
    params = jax.eval_shape(lambda: state_init.unboxed_params(task, jax.random.key(0)))
    counts = {name: int(sum(np.prod(x.shape) for x in jax.tree.leaves(sub))) for name, sub in params.items()}
    counts["total"] = int(sum(counts.values()))
    return counts


def format_counts(counts: dict[str, int]) -> str:
    return "\n".join(f"params/{name}: {count}" for name, count in counts.items())
