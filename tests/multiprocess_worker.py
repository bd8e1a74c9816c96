"""One process of a localhost multi-process run (spawned by test_multiprocess.py).

  python tests/multiprocess_worker.py PORT PROCESS_ID NUM_PROCESSES WORKDIR SIGTERM_AT_STEP OUT_JSON

Trains the 6-step tiny config; process 0 alone receives SIGTERM after step SIGTERM_AT_STEP (0: never),
so stopping together relies on the cross-process preemption agreement.
"""

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.subprocess_env import xla_flags  # noqa: E402

os.environ["XLA_FLAGS"] = xla_flags(device_count=4)
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(port, process_id, num_processes, workdir, sigterm_at_step, out_json):
    from titok_var import distributed

    distributed.initialize(f"localhost:{port}", int(num_processes), int(process_id), auto=False)
    from tests.helpers import tiny_titok_config
    from titok_var.training import trainer

    import jax

    config = tiny_titok_config(num_steps=6, checkpoint_every_steps=100)
    config.mesh.update(data=2, fsdp=4)

    def sigterm_process_0(step, state):
        del state
        if jax.process_index() == 0 and step == int(sigterm_at_step):
            os.kill(os.getpid(), signal.SIGTERM)

    result = trainer.train(config, workdir, step_callback=sigterm_process_0)
    with open(out_json, "w") as f:
        json.dump({"losses": {str(k): v for k, v in result.losses.items()},
                   "process_count": jax.process_count(), "device_count": jax.device_count(),
                   "preempted": result.preempted, "final_step": int(result.state.step)}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
