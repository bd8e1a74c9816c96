"""bench/sample_throughput.py end to end on the tiny generators: every report field is a positive
finite number, the fields agree with each other, and the FLOPs per image match a hand count of the
network's matmuls (all VAR scales with the CFG-doubled batch; all MaskGIT steps, although XLA's cost
analysis sees the step scan's body once). Not a timing assertion."""

import math
import re

import pytest
from absl import flags

from bench import sample_throughput
from configs import maskgit_tiny, titok_tiny, var_tiny, var_vqvae_tiny

NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"


def run_main(capsys, *args) -> dict[str, float]:
    """Runs the script's main with these flags; returns {field: first number on its line}."""
    try:
        flags.FLAGS(["sample_throughput", "--num_devices=1", "--batch_size=2", "--runs=1", "--warmup=0",
                     "--peak_tflops=0.001", *args])
        sample_throughput.main([])
    finally:
        flags.FLAGS.unparse_flags()
    text = capsys.readouterr().out
    fields = {}
    for name in sample_throughput.REPORT_FIELDS:
        match = re.search(rf"^{name}: ({NUMBER})", text, re.MULTILINE)
        assert match, f"no {name} in report:\n{text}"
        fields[name] = float(match.group(1))
    fields["tokens_per_image"] = float(re.search(r"\((\d+) tokens per image\)", text).group(1))
    return fields


def check_consistent(fields, batch_size, tokens_per_image, peak_tflops=0.001):
    for name in sample_throughput.REPORT_FIELDS:
        assert math.isfinite(fields[name]) and fields[name] > 0, (name, fields[name])
    assert fields["tokens_per_image"] == tokens_per_image
    assert fields["images_per_s"] * fields["seconds_per_batch"] == pytest.approx(batch_size, rel=1e-2)
    assert fields["tokens_per_s"] == pytest.approx(fields["images_per_s"] * tokens_per_image, rel=1e-2)
    # One device: MFU = FLOPs per batch / time / peak.
    mfu = fields["model_flops_per_image"] * batch_size / fields["seconds_per_batch"] / (peak_tflops * 1e12)
    assert fields["mfu"] == pytest.approx(100 * mfu, rel=2e-2)


def var_matmul_flops_per_image(model, vocab_size, code_dim, patch_nums):
    """2 rows (conditional + null class) x every token's block projections, head and word embedding."""
    width, depth = model.width, model.depth
    tokens = sum(p * p for p in patch_nums)
    per_token = 2 * (depth * 12 * width * width + width * vocab_size)
    word_embed = 2 * (tokens - 1) * code_dim * width  # every scale but the first reads f_hat
    return 2 * (tokens * per_token + word_embed)


def maskgit_matmul_flops_per_image(model, num_steps):
    """Guided (2 rows) x steps x (projections + attention of N + 1 tokens, head on N)."""
    width, tokens = model.hidden_size, model.seq_len + 1
    layer = 2 * tokens * (4 * width * width + 2 * width * model.mlp_dim) + 4 * tokens * tokens * width
    forward = model.depth * layer + 2 * model.seq_len * width * model.codebook_size
    return 2 * num_steps * forward


def test_var_tiny_report(capsys):
    fields = run_main(capsys, "--config=configs/var_tiny.py")
    config = var_tiny.get_config()
    vqvae = var_vqvae_tiny.get_config().model
    check_consistent(fields, 2, sum(p * p for p in vqvae.patch_nums))
    assert config.sampling.cfg != 0  # the count below assumes the doubled batch
    matmuls = var_matmul_flops_per_image(config.model, vqvae.codebook_size, vqvae.code_dim, vqvae.patch_nums)
    # Attention over the KV cache, norms and sampling add to the matmuls, but less than as much again.
    assert matmuls <= fields["model_flops_per_image"] <= 2 * matmuls


def test_maskgit_tiny_report(capsys):
    fields = run_main(capsys, "--config=configs/maskgit_tiny.py", "--cfg=3.0")
    config = maskgit_tiny.get_config()
    assert config.model.seq_len == titok_tiny.get_config().model.num_latent_tokens
    check_consistent(fields, 2, config.model.seq_len)
    matmuls = maskgit_matmul_flops_per_image(config.model, config.sampling.num_steps)
    # Without the scan correction the count would be num_steps (8) times smaller.
    assert 0.95 * matmuls <= fields["model_flops_per_image"] <= 1.5 * matmuls


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="benchmarks generators"):
        sample_throughput.apply_overrides(titok_tiny.get_config(), None, None)
    with pytest.raises(ValueError, match="batch size 3 must be a positive multiple"):
        sample_throughput.run_benchmark(maskgit_tiny.get_config(), 3, runs=1, warmup=0, num_devices=2)
    with pytest.raises(ValueError, match="runs >= 1"):
        sample_throughput.run_benchmark(maskgit_tiny.get_config(), 2, runs=0, warmup=0)
