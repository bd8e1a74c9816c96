"""main.py under real signals, as on a preemptible cluster, with the default asynchronous
checkpointing: SIGTERM at whatever step it lands exits 0 without a traceback, leaving a
checkpoint of the stop step and train_status.json "preempted"; after kill -9 the next run takes
over the stale lock and resumes from the newest checkpoint to "complete"."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO_ROOT
from tests.subprocess_env import cpu_env

COMMON = ["--config=tests/tiny_main_config.py", "--config.train.async_checkpointing=True",
          "--config.train.checkpoint_every_steps=2", "--config.train.log_every_steps=1",
          "--config.train.eval_every_steps=0"]


def _start(workdir, num_steps):
    env = cpu_env()
    return subprocess.Popen([sys.executable, "main.py", *COMMON, f"--config.train.num_steps={num_steps}",
                             f"--workdir={workdir}"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint_after(workdir, step, proc, timeout=300):
    """Waits until the run has committed a checkpoint of a step after `step`."""
    deadline = time.monotonic() + timeout
    while not (os.path.isdir(os.path.join(workdir, "checkpoints")) and
               any(s > step and os.path.exists(os.path.join(workdir, "checkpoints", str(s), "checksums.json"))
                   for s in _steps(workdir))):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no checkpoint after step {step} appeared"
        time.sleep(0.05)


def _steps(workdir):
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


# SIGTERM exactly on a checkpoint step (the saved step is reused) is tested in-process with a
# step callback: tests/test_checkpoint_resume.py.


def test_sigterm_exits_zero_with_a_checkpoint_and_kill_9_resumes(tmp_path):
    workdir = str(tmp_path / "run")
    proc = _start(workdir, 100_000)
    _wait_for_checkpoint_after(workdir, 0, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    status = json.load(open(os.path.join(workdir, "train_status.json")))
    assert status["status"] == "preempted" and status["step"] == _steps(workdir)[-1] >= 2
    assert not os.path.exists(os.path.join(workdir, "train.lock"))

    proc = _start(workdir, 100_000)  # resumes, then dies without warning
    _wait_for_checkpoint_after(workdir, status["step"], proc)
    proc.kill()
    proc.wait()
    assert os.path.exists(os.path.join(workdir, "train.lock"))  # left behind by the killed run
    newest = _steps(workdir)[-1]

    proc = _start(workdir, newest + 2)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "taking over the stale lock" in err
    assert f"restoring step {newest}" in err
    assert json.load(open(os.path.join(workdir, "train_status.json"))) == {
        "status": "complete", "step": newest + 2, "num_steps": newest + 2}
