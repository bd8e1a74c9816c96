"""The launch scripts act on how a run ended (train_status.json, read by
`python -m titok_var.tools.run_status`), tested with stand-ins for srun, scontrol and gcloud on
PATH that record their calls and play a scenario: SLURM requeues its own job only when the run
stopped early, within MAX_REQUEUES; the TPU scripts run again until complete, with a bounded number
of restarts; the spot variant recreates a preempted queued resource."""

import json
import os
import stat
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A stand-in: appends "name args" to $CALLS; `... ssh`/`srun` play the next ending from $ENDINGS
# (complete | preempted | crash) by writing the status file the real run would write.
STAND_IN = r'''#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$CALLS"
name=$(basename "$0")
if [ "$name" = srun ] || { [ "$name" = gcloud ] && [ "$4" = ssh ]; }; then
  ending=$(head -n 1 "$ENDINGS"); sed -i 1d "$ENDINGS"
  case "$ending" in
    complete) echo '{"status": "complete", "step": 10, "num_steps": 10}' > "$WORKDIR/train_status.json" ;;
    preempted) echo '{"status": "preempted", "step": 4, "num_steps": 10}' > "$WORKDIR/train_status.json" ;;
    crash) exit 1 ;;
    failed) echo '{"status": "failed", "error": "NonFiniteLossError"}' > "$WORKDIR/train_status.json"; exit 1 ;;
  esac
  exit 0
fi
if [ "$name" = gcloud ] && [ "$3" = queued-resources ] && [ "$4" = describe ]; then
  state=$(head -n 1 "$QR_STATES" 2>/dev/null); sed -i 1d "$QR_STATES" 2>/dev/null
  [ "$state" = MISSING ] && exit 1
  echo "${state:-ACTIVE}"
fi
exit 0
'''


@pytest.fixture
def cluster(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("srun", "scontrol", "gcloud"):
        path = bin_dir / name
        path.write_text(STAND_IN)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    workdir = tmp_path / "run"
    workdir.mkdir()

    def run(script, endings, qr_states=(), args=(), **env):
        (tmp_path / "endings").write_text("".join(f"{e}\n" for e in endings))
        (tmp_path / "qr_states").write_text("".join(f"{s}\n" for s in qr_states))
        calls = tmp_path / "calls"
        calls.write_text("")
        full_env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", CALLS=str(calls),
                        ENDINGS=str(tmp_path / "endings"), QR_STATES=str(tmp_path / "qr_states"),
                        WORKDIR=str(workdir), CONFIG="configs/titok_l32.py", PYTHON=sys.executable,
                        PYTHONPATH=REPO, BACKOFF_S="0", POLL_S="0", TPU_NAME="tpu", ZONE="zone", QR_NAME="qr",
                        ACCELERATOR="v4-8", RUNTIME="rt", **env)
        done = subprocess.run(["bash", os.path.join(REPO, "launch", script), *args], cwd=REPO, env=full_env,
                              capture_output=True, text=True, timeout=120)
        return done.returncode, calls.read_text().splitlines(), done.stdout + done.stderr

    return run


def test_slurm_requeues_only_a_run_that_stopped_early(cluster):
    rc, calls, out = cluster("slurm_gpu.sbatch", ["preempted"], SLURM_JOB_ID="42", SLURM_RESTART_COUNT="3")
    assert rc == 0, out
    assert calls[0].startswith("srun --kill-on-bad-exit=1") and "--distributed" in calls[0]
    assert calls[1:] == ["scontrol requeue 42"]
    assert "requeue 4 of 50" in out
    rc, calls, out = cluster("slurm_gpu.sbatch", ["complete"], SLURM_JOB_ID="42")
    assert rc == 0 and not any(c.startswith("scontrol") for c in calls), out
    rc, calls, out = cluster("slurm_gpu.sbatch", ["crash"], SLURM_JOB_ID="42")
    assert rc == 1 and not any(c.startswith("scontrol") for c in calls), out
    rc, calls, out = cluster("slurm_gpu.sbatch", ["failed"], SLURM_JOB_ID="42")
    assert rc == 1 and not any(c.startswith("scontrol") for c in calls), out
    rc, calls, out = cluster("slurm_gpu.sbatch", ["preempted"], SLURM_JOB_ID="42", SLURM_RESTART_COUNT="5",
                             MAX_REQUEUES="5")
    assert rc == 1 and not any(c.startswith("scontrol") for c in calls) and "not requeued" in out


def test_tpu_pod_runs_again_until_complete_within_its_restarts(cluster):
    # A crash after a preemption leaves no status of its own (each attempt clears the last one).
    rc, calls, out = cluster("tpu_pod.sh", ["preempted", "crash", "complete"])
    assert rc == 0, out
    ssh = [c for c in calls if " ssh " in c]
    assert len(ssh) == 3 and all(c.endswith("main.py --config configs/titok_l32.py --workdir "
                                            f"{c.split('--workdir ')[1].split()[0]} --distributed") for c in ssh), ssh
    rc, calls, out = cluster("tpu_pod.sh", ["complete"], args=["--config.train.num_steps=10", "--step", "3"])
    assert [c for c in calls if " ssh " in c][0].endswith("--distributed --config.train.num_steps=10 --step 3")
    rc, calls, out = cluster("tpu_pod.sh", ["failed", "complete"])
    assert rc == 1 and len([c for c in calls if " ssh " in c]) == 1 and "not restarted" in out
    rc, calls, out = cluster("tpu_pod.sh", ["preempted"] * 5, MAX_RESTARTS="2")
    assert rc == 1 and len([c for c in calls if " ssh " in c]) == 3 and "not complete after 2 restarts" in out


def test_spot_queued_resource_is_recreated_after_preemption(cluster):
    # Round 0: no queued resource -> create, PROVISIONING then ACTIVE, run: preempted.
    # Round 1: the spot slice was taken away (SUSPENDED) -> delete, create, ACTIVE, run: complete.
    states = ["MISSING", "PROVISIONING", "ACTIVE", "SUSPENDED", "ACTIVE"]
    rc, calls, out = cluster("tpu_queued_spot.sh", ["preempted", "complete"], qr_states=states)
    assert rc == 0, out
    verbs = ["/".join(c.split()[3:5]) for c in calls]
    assert verbs == ["queued-resources/describe", "queued-resources/create", "queued-resources/describe",
                     "queued-resources/describe", "tpu-vm/ssh", "queued-resources/describe",
                     "queued-resources/delete", "queued-resources/create", "queued-resources/describe", "tpu-vm/ssh",
                     "queued-resources/delete"], verbs
    assert "--spot" in calls[1]


def test_run_status_reads_how_the_run_ended(tmp_path):
    from titok_var.tools import run_status
    from titok_var.training import run_status as status_file

    assert run_status.main([str(tmp_path)]) == 4
    status_file.write_status(str(tmp_path), "preempted", 4, 10)
    assert run_status.main([str(tmp_path)]) == 3
    status_file.write_status(str(tmp_path), "complete", 10, 10)
    assert run_status.main([str(tmp_path)]) == 0
    assert json.loads((tmp_path / "train_status.json").read_text())["step"] == 10
    status_file.write_status(str(tmp_path), "failed", error="NonFiniteLossError: the loss became nan")
    assert run_status.main([str(tmp_path)]) == 5
    (tmp_path / "train_status.json").write_text("{}")  # valid JSON without a status
    assert run_status.main([str(tmp_path)]) == 4
    assert run_status.main(["--clear", str(tmp_path)]) == 0 and not (tmp_path / "train_status.json").exists()
