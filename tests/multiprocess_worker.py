"""One process of a localhost multi-process run (spawned by test_multiprocess.py).

  python tests/multiprocess_worker.py PORT PROCESS_ID NUM_PROCESSES WORKDIR SIGTERM_AT_STEP OUT_JSON

Trains the 8-step tiny config; process 0 alone receives SIGTERM after step SIGTERM_AT_STEP (0: never),
so stopping together relies on JAX's preemption sync service. Process 0 then pauses 3 s inside that
step: the service's SIGTERM watcher polls once a second, and the pause lets the notice reach every
process before the run could end (a slow step, as on a real cluster).
"""

import json
import os
import signal
import sys
import time

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

    config = tiny_titok_config(num_steps=8, checkpoint_every_steps=100)
    config.mesh.update(data=2, fsdp=4)

    def sigterm_process_0(step, state):
        del state
        if jax.process_index() == 0 and step == int(sigterm_at_step):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(3.0)

    result = trainer.train(config, workdir, step_callback=sigterm_process_0)
    with open(out_json, "w") as f:
        json.dump({"losses": {str(k): v for k, v in result.losses.items()},
                   "process_count": jax.process_count(), "device_count": jax.device_count(),
                   "preempted": result.preempted, "final_step": int(result.state.step)}, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
