"""Export and reload on another mesh; main.py modes as subprocesses on the tiny config: train, eval of a
checkpoint and of an export, summary, export, and a damaged export refused by name."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import titok_var
from titok_var.training import trainer
from titok_var.tools import export
from tests.conftest import REPO_ROOT
from tests.subprocess_env import cpu_env
from tests.helpers import tiny_titok_config


def test_export_loads_back_with_one_call_on_a_different_mesh(tmp_path):
    config = tiny_titok_config(num_steps=3, checkpoint_every_steps=3)
    config.mesh.update(data=2, fsdp=4)
    result = trainer.train(config, str(tmp_path / "work"))
    out = export.export_checkpoint(config, str(tmp_path / "work"), str(tmp_path / "export"))
    meta = json.load(open(os.path.join(out, "export.json")))
    assert meta["step"] == 3 and meta["ema"] is True

    one_device = jax.sharding.Mesh(jax.devices()[:1], ("data",))
    task, params, loaded_config = titok_var.load_exported(out, mesh=one_device)
    assert loaded_config.model.num_latent_tokens == config.model.num_latent_tokens
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(result.state.ema_params))):
        np.testing.assert_array_equal(np.asarray(a), b)
    images = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32)
    recon, aux = task.reconstruct(params, images)
    assert recon.shape == images.shape and aux["indices"].shape == (2, 8)


def test_main_train_eval_summary_export_and_damaged_export_dir(tmp_path):
    workdir, export_dir = str(tmp_path / "work"), str(tmp_path / "export")
    common = ["--config=tests/tiny_main_config.py", f"--workdir={workdir}"]
    env = cpu_env()

    def run(*args, expect_success=True):
        result = subprocess.run([sys.executable, "main.py", *common, *args], cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=600)
        assert (result.returncode == 0) == expect_success, result.stderr[-3000:]
        return result

    train_log = run("--mode=train").stderr
    # Quiet logs: every INFO line comes from this package (or clu's progress line), none from orbax/jax.
    ours = {name for _, _, files in os.walk(os.path.join(REPO_ROOT, "titok_var")) for name in files} | {
        "main.py", "periodic_actions.py", "local.py", "logging_writer.py"}  # clu: progress line, metrics
    info_sources = set(re.findall(r"^I\d{4} [\d:.]+\s+\d+ (\S+?\.py):\d+\]", train_log, flags=re.M))
    assert info_sources and info_sources <= ours, info_sources - ours
    assert os.path.exists(os.path.join(workdir, "eval", "step_000000004", "reconstructions.png"))
    metrics = json.load(open(os.path.join(workdir, "eval", "step_000000004", "metrics.json")))
    assert {"psnr", "ssim", "codebook_usage", "codebook_perplexity"} <= set(metrics)
    run("--mode=eval", "--step=2")
    assert os.path.exists(os.path.join(workdir, "eval", "step_000000002", "metrics.json"))
    run("--mode=export", f"--export_dir={export_dir}")
    assert os.path.isdir(os.path.join(export_dir, "params"))

    # summary: one line per top-level module and a total, equal to the exported parameters.
    lines = run("--mode=summary").stdout.strip().splitlines()
    counts = dict(line.split(": ") for line in lines if line.startswith("params/"))
    _, exported_params, _ = export.load_exported(export_dir)
    sizes = {name: sum(np.size(x) for x in jax.tree.leaves(sub)) for name, sub in exported_params.items()}
    assert {k: int(v) for k, v in counts.items()} == {
        **{f"params/{k}": v for k, v in sizes.items()}, "params/total": sum(sizes.values())}

    # eval of the export writes its metrics into the other work dir, under the exported step (4) ...
    export_eval_dir = str(tmp_path / "export_eval")
    subprocess_result = subprocess.run(
        [sys.executable, "main.py", "--config=tests/tiny_main_config.py", f"--workdir={export_eval_dir}",
         "--mode=eval", f"--export_dir={export_dir}"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=600)
    assert subprocess_result.returncode == 0, subprocess_result.stderr[-3000:]
    assert os.listdir(os.path.join(export_eval_dir, "eval")) == ["step_000000004"]
    export_metrics = json.load(open(os.path.join(export_eval_dir, "eval", "step_000000004", "metrics.json")))
    assert export_metrics["psnr"] == pytest.approx(metrics["psnr"], abs=1e-4)  # EMA params, as the eval in training
    # ... and a byte flipped in one of its files is refused, naming the export and the file.
    params_dir = os.path.join(export_dir, "params")
    damaged = max((os.path.join(d, f) for d, _, files in os.walk(params_dir) for f in files), key=os.path.getsize)
    with open(damaged, "r+b") as f:
        f.seek(os.path.getsize(damaged) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    failed = run("--mode=eval", f"--export_dir={export_dir}", expect_success=False)
    assert f"export {export_dir}: file {damaged} does not match its checksum" in failed.stderr
    # A second train call finds the finished run and does nothing more.
    run("--mode=train")
    assert ocp.CheckpointManager(os.path.join(workdir, "checkpoints")).latest_step() == 4
