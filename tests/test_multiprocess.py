"""Two real processes on localhost (4 CPU devices each, gloo collectives) against one process."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np

from titok_var.training import trainer
from tests.conftest import REPO_ROOT
from tests.helpers import tiny_titok_config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def run_two_processes(workdir, sigterm_at_step, tmp_path):
    """Runs the worker pair; returns process 0's losses and the step both stopped at."""
    port = free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    outputs = [tmp_path / f"process_{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "tests/multiprocess_worker.py", str(port), str(i), "2", str(workdir),
             str(sigterm_at_step), str(outputs[i])],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    results = [json.load(open(path)) for path in outputs]
    assert all(r["process_count"] == 2 and r["device_count"] == 8 for r in results)
    final_steps = {r["final_step"] for r in results}
    assert len(final_steps) == 1, f"processes stopped at different steps {final_steps}"
    return {int(k): v for k, v in results[0]["losses"].items()}, final_steps.pop()


def sigterm_at(stop_step):
    def callback(step, state):
        del state
        if step == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)

    return callback


def test_two_processes_match_one_and_checkpoints_move_between_process_counts(tmp_path):
    config = tiny_titok_config(num_steps=6, checkpoint_every_steps=100)
    config.mesh.update(data=2, fsdp=4)
    reference = trainer.train(config, str(tmp_path / "reference")).losses

    # 1 process stops at 2; 2 processes restore it and stop together at 4 (SIGTERM to process 0
    # only); 1 process restores that and finishes. Every leg shares the 6-step schedule.
    shared = str(tmp_path / "shared")
    first = trainer.train(config, shared, step_callback=sigterm_at(2))
    middle, stopped_at = run_two_processes(shared, 4, tmp_path)
    last = trainer.train(config, shared)
    assert first.preempted and stopped_at == 4
    assert sorted(first.losses) == [1, 2] and sorted(middle) == [3, 4] and sorted(last.losses) == [5, 6]
    combined = {**first.losses, **middle, **last.losses}
    np.testing.assert_allclose([combined[s] for s in range(1, 7)], [reference[s] for s in range(1, 7)],
                               rtol=2e-5)

    # An uninterrupted two-process run reproduces the single-process losses.
    fresh, stopped_at = run_two_processes(tmp_path / "fresh", 0, tmp_path)
    assert stopped_at == 6
    np.testing.assert_allclose([fresh[s] for s in range(1, 7)], [reference[s] for s in range(1, 7)], rtol=2e-5)
