"""Checkpoints and exports carry per-file checksums: flipped bytes, a truncated, emptied or deleted
file is an error naming the step (or export) and the file; training resumes from the newest intact
checkpoint and moves the damaged one aside; eval and export of a damaged checkpoint are errors."""

import os

import numpy as np
import pytest

from tests.helpers import tiny_titok_config
from titok_var.checkpointing import checksums
from titok_var.checkpointing.manager import DAMAGED_DIR
from titok_var.tools import export
from titok_var.training import inference, trainer


def _largest_file(directory):
    files = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names
             if name != checksums.CHECKSUM_FILE]
    return max(files, key=os.path.getsize)


def _flip_bytes(path, count=64):
    data = bytearray(open(path, "rb").read())
    start = len(data) // 2
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Steps 2 and 4 of a tiny run with the default asynchronous checkpointing."""
    root = tmp_path_factory.mktemp("damaged")
    config = tiny_titok_config(num_steps=4, checkpoint_every_steps=2, log_every_steps=1)
    config.train.async_checkpointing = True
    straight = trainer.train(config, str(root / "straight"))
    config.train.num_steps = 6
    return config, root, straight


def _copy_run(root, name):
    import shutil

    target = root / name
    shutil.copytree(root / "straight", target)
    (target / "train_status.json").unlink(missing_ok=True)
    return target


def test_every_committed_step_has_checksums(trained):
    config, root, _ = trained
    for step in (2, 4):
        step_dir = root / "straight" / "checkpoints" / str(step)
        assert checksums.verify(step_dir, f"step {step}")


def test_flipped_bytes_fail_eval_and_export_and_training_falls_back(trained, tmp_path):
    config, root, straight = trained
    workdir = _copy_run(root, "flipped")
    damaged = _largest_file(workdir / "checkpoints" / "4" / "state")
    _flip_bytes(damaged)
    with pytest.raises(checksums.DamagedCheckpointError,
                       match=rf"checkpoint step 4 in .*: file {damaged} does not match its checksum"):
        inference.evaluate(config, str(workdir))
    with pytest.raises(checksums.DamagedCheckpointError, match="checkpoint step 4"):
        export.export_checkpoint(config, str(workdir), str(tmp_path / "export"))
    resumed = trainer.train(config, str(workdir))
    assert sorted(resumed.losses) == [3, 4, 5, 6]
    for step in (3, 4):  # step 4 recomputed from the intact step 2 equals the original
        np.testing.assert_allclose(resumed.losses[step], straight.losses[step], rtol=1e-6, atol=1e-7)
    assert os.path.isdir(workdir / DAMAGED_DIR / "4")  # moved aside, not deleted
    assert "6" in os.listdir(workdir / "checkpoints")


@pytest.mark.parametrize("damage", ["truncate", "empty_metadata", "delete_manifest"])
def test_truncated_emptied_or_deleted_files_are_named(trained, damage):
    config, root, _ = trained
    workdir = _copy_run(root, damage)
    state_dir = workdir / "checkpoints" / "4" / "state"
    if damage == "truncate":
        path = _largest_file(state_dir)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        expected = rf"file {path} has {len(data) // 2} bytes, {len(data)} were written"
    elif damage == "empty_metadata":
        path = state_dir / "_METADATA"
        path.write_text("")
        expected = rf"file {path} has 0 bytes"
    else:
        path = state_dir / "manifest.ocdbt"
        path.unlink()
        expected = rf"file {path} is missing"
    with pytest.raises(checksums.DamagedCheckpointError, match=expected):
        inference.evaluate(config, str(workdir))


def test_a_damaged_export_is_named(trained, tmp_path):
    config, root, _ = trained
    export_dir = export.export_checkpoint(config, str(root / "straight"), str(tmp_path / "export"))
    _, params, _ = export.load_exported(export_dir)  # intact: loads
    damaged = _largest_file(os.path.join(export_dir, "params"))
    _flip_bytes(damaged)
    with pytest.raises(checksums.DamagedCheckpointError, match=rf"export {export_dir}: file {damaged} does not match"):
        export.load_exported(export_dir)
    with pytest.raises(checksums.DamagedCheckpointError, match=rf"export {export_dir}"):
        inference.evaluate(config, str(tmp_path / "work"), export_dir=export_dir)
