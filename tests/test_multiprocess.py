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
    """Runs the worker pair; returns process 0's losses, the step both stopped at and whether both
    report a preemption."""
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
        assert proc.returncode == 0, out[-3000:]  # a preempted run exits 0 too (train_status.json says which)
    results = [json.load(open(path)) for path in outputs]
    assert all(r["process_count"] == 2 and r["device_count"] == 8 for r in results)
    final_steps = {r["final_step"] for r in results}
    assert len(final_steps) == 1, f"processes stopped at different steps {final_steps}"
    preempted = {r["preempted"] for r in results}
    assert len(preempted) == 1, f"only some processes saw the preemption: {results}"
    return {int(k): v for k, v in results[0]["losses"].items()}, final_steps.pop(), preempted.pop()


def sigterm_at(stop_step):
    def callback(step, state):
        del state
        if step == stop_step:
            os.kill(os.getpid(), signal.SIGTERM)

    return callback


def checkpoint_steps(workdir):
    return sorted(int(p.name) for p in (workdir / trainer.CHECKPOINT_DIR).iterdir() if p.name.isdigit())


def test_two_processes_match_one_and_checkpoints_move_between_process_counts(tmp_path):
    config = tiny_titok_config(num_steps=8, checkpoint_every_steps=100)
    config.mesh.update(data=2, fsdp=4)
    reference = trainer.train(config, str(tmp_path / "reference")).losses

    # 1 process stops at 2; 2 processes restore it and stop together after SIGTERM to process 0
    # alone at step 4 (the preemption sync service picks the stop step: the signal step or a later
    # one, never an earlier one, and the same on both); 1 process restores that and finishes.
    # Every leg shares the 8-step schedule.
    shared = tmp_path / "shared"
    first = trainer.train(config, str(shared), step_callback=sigterm_at(2))
    middle, stopped_at, preempted = run_two_processes(shared, 4, tmp_path)
    assert first.preempted and preempted and 4 <= stopped_at < 8, (stopped_at, preempted)
    assert checkpoint_steps(shared) == [2, stopped_at]
    status = json.loads((shared / trainer.STATUS_FILE).read_text())
    assert status["status"] == "preempted" and status["step"] == stopped_at
    last = trainer.train(config, str(shared))
    assert sorted(first.losses) == [1, 2] and sorted(middle) == list(range(3, stopped_at + 1))
    assert sorted(last.losses) == list(range(stopped_at + 1, 9))
    combined = {**first.losses, **middle, **last.losses}
    np.testing.assert_allclose([combined[s] for s in range(1, 9)], [reference[s] for s in range(1, 9)],
                               rtol=2e-5)

    # An uninterrupted two-process run reproduces the single-process losses.
    fresh, stopped_at, preempted = run_two_processes(tmp_path / "fresh", 0, tmp_path)
    assert stopped_at == 8 and not preempted
    np.testing.assert_allclose([fresh[s] for s in range(1, 9)], [reference[s] for s in range(1, 9)], rtol=2e-5)
