"""A training config is checked before any model or data work, each error naming the field, its
value and what is allowed; a work dir holds one training run at a time."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import tiny_titok_config
from titok_var.training import config_checks, trainer, workdir_lock


@pytest.mark.parametrize("field,value,message", [
    ("train.num_steps", -1, r"config.train.num_steps = -1 is not allowed: a positive number of steps"),
    ("train.checkpoint_every_steps", 0, r"checkpoint_every_steps = 0 is not allowed"),
    ("train.log_every_steps", 0, r"log_every_steps = 0 is not allowed"),
    ("train.global_batch_size", 12, r"global_batch_size = 12 is not allowed: a positive multiple of data x fsdp "
                                    r"= 8 x 1 = 8 devices"),
    ("eval.global_batch_size", 4, r"eval.global_batch_size = 4 is not allowed"),
    ("data.name", "no_such_dataset_xyz", r"config.data.name = 'no_such_dataset_xyz' .* cannot be opened"),
])
def test_bad_fields_fail_before_any_work_naming_field_and_value(tmp_path, field, value, message):
    config = tiny_titok_config()
    section, name = field.split(".")
    config[section][name] = value
    start = time.monotonic()
    with pytest.raises(config_checks.ConfigError, match=message):
        trainer.train(config, str(tmp_path))
    assert time.monotonic() - start < 60
    assert not (tmp_path / "checkpoints").exists()  # nothing was built or written


def test_a_second_run_in_the_same_work_dir_is_refused_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / workdir_lock.LOCK_FILE
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "started": "earlier"}))
        with pytest.raises(workdir_lock.WorkdirLockedError, match=f"in use by another training run .*pid {holder.pid}"):
            trainer.train(tiny_titok_config(), str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale and taken over; the lock is released at the end.
    with workdir_lock.hold(str(tmp_path)):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    lock.write_text(json.dumps({"host": "another-host", "pid": 1, "started": "earlier"}))
    with pytest.raises(workdir_lock.WorkdirLockedError, match="host another-host"):
        with workdir_lock.hold(str(tmp_path)):
            pass
