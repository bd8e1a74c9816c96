"""Plants typical bugs in the core modules one at a time and reports which tests catch each.

  python tests/mutation_check.py                 # every mutant (see README "Testing" for its time)
  python tests/mutation_check.py --only var_guidance_held_at_cfg,ema_decay_swapped

Each mutant is one exact text substitution in one file of a copy of the tracked files (the
working tree is never touched), followed by `pytest -x` over the test files that should notice
it. A mutant is "caught" when that run fails, "survived" when it passes. The unmutated copy runs
first over every listed test file; a failing baseline stops the script. Not part of CI: it runs
the same test files many times. `tests/test_mutation_sites.py` keeps the list in step with the
code (every original text occurs exactly once, every mutated file still parses).
"""

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    mutated: str
    tests: tuple[str, ...]  # test files or test ids (file::name) expected to notice


MUTANTS = (
    Mutant("quantizer_no_straight_through", "titok_var/quantizers/vector_quantizer.py",
           "return z + jax.lax.stop_gradient(quantized - z)", "return jax.lax.stop_gradient(quantized)",
           ("tests/test_quantizer.py", "tests/test_titok_model.py")),
    Mutant("multiscale_residual_half_subtracted", "titok_var/quantizers/multiscale.py",
           "f_rest = f_rest - jax.lax.stop_gradient(h)", "f_rest = f_rest - 0.5 * jax.lax.stop_gradient(h)",
           ("tests/test_quantizer.py", "tests/test_var_vqvae.py")),
    Mutant("var_block_causal_sees_next_scale", "titok_var/models/var.py",
           "return ids[:, None] >= ids[None, :]", "return ids[:, None] + 1 >= ids[None, :]",
           ("tests/test_var_model.py",)),
    Mutant("var_adaln_scale_without_one", "titok_var/models/var.py",
           "return x * (1.0 + scale) + shift", "return x * scale + shift",
           ("tests/test_var_model.py",)),
    Mutant("var_kv_cache_written_at_zero", "titok_var/models/var.py",
           "x, layer_cache = block(x, block_cond, cache=layer_cache, cache_offset=begin)",
           "x, layer_cache = block(x, block_cond, cache=layer_cache, cache_offset=0)",
           ("tests/test_var_model.py",)),
    Mutant("var_guidance_held_at_cfg", "titok_var/generation/var_sampling.py",
           "t = logit_filters.guidance_at_scale(settings.cfg, si, num_scales)", "t = settings.cfg",
           ("tests/test_var_generator.py::test_guided_greedy_sampling_ramps_guidance_over_the_scales",
            "tests/test_var_sampling_filters.py")),
    Mutant("top_k_keeps_one_more", "titok_var/generation/logit_filters.py",
           "kth_largest = jax.lax.top_k(logits, top_k)[0][..., -1:]",
           "kth_largest = jax.lax.top_k(logits, top_k + 1)[0][..., -1:]",
           ("tests/test_var_sampling_filters.py",)),
    Mutant("edit_mask_rounded_twice", "titok_var/generation/edit_masks.py",
           "fused = np.float64(scale) * (dst + f32(0.5)).astype(np.float64) - 0.5",
           "fused = scale * (dst + f32(0.5)) - f32(0.5)",
           ("tests/test_var_sampling_filters.py",)),
    Mutant("maskgit_arccos_schedule_halved", "titok_var/generation/mask_schedule.py",
           "xp.arccos(xp.clip(xp.asarray(r), -1.0, 1.0)) / (0.5 * math.pi)",
           "xp.arccos(xp.clip(xp.asarray(r), -1.0, 1.0)) / math.pi",
           ("tests/test_maskgit.py",)),
    Mutant("maskgit_gumbel_not_annealed", "titok_var/generation/maskgit_sampling.py",
           "return settings.randomize_temperature * (1.0 - step_ratios(settings))",
           "return settings.randomize_temperature * np.ones(settings.num_steps)",
           ("tests/test_maskgit.py",)),
    Mutant("eval_psnr_counts_padding", "titok_var/evaluation/reconstruction_sums.py",
           '"psnr": jnp.sum(image_metrics.psnr(images, reconstructions) * weights),',
           '"psnr": jnp.sum(image_metrics.psnr(images, reconstructions)),',
           ("tests/test_eval_metrics_padding.py",)),
    Mutant("ema_decay_swapped", "titok_var/training/ema.py",
           "e - (1.0 - decay) * (e - p)", "e - decay * (e - p)",
           ("tests/test_training_pieces.py",)),
    Mutant("var_lr_hold_skipped", "titok_var/training/optimizer.py",
           "after = jnp.where(progress < VAR_HOLD_FRACTION, peak, decay)", "after = decay",
           ("tests/test_var_recipes.py::test_lin0_learning_rate_is_the_official_curve_over_a_d16_run",)),
    Mutant("data_processes_overlap", "titok_var/data/pipeline.py",
           "start = step * global_batch_size + process_index * local",
           "start = step * global_batch_size + process_index",
           ("tests/test_data.py::test_train_batches_process_split_matches_single_process",)),
    Mutant("converter_conv_kernel_flipped", "titok_var/tools/convert_titok.py",
           "return array.transpose(2, 3, 1, 0)", "return array.transpose(3, 2, 1, 0)",
           ("tests/test_convert_titok.py", "tests/test_official_layout.py")),
    Mutant("checksum_mismatch_ignored", "titok_var/checkpointing/checksums.py",
           'if sha != expected["sha256"]:', "if False:",
           ("tests/test_damaged_checkpoints.py",)),
    Mutant("nonfinite_state_reported_finite", "titok_var/training/trainer.py",
           "state_is_finite=_all_finite((params, opt_state)),", "state_is_finite=jnp.asarray(True),",
           ("tests/test_checkpoint_resume.py::test_a_state_made_non_finite_by_the_update_is_never_checkpointed",)),
)


def mutate_source(source: str, mutant: Mutant) -> str:
    count = source.count(mutant.original)
    if count != 1:
        raise ValueError(f"{mutant.name}: {mutant.original!r} occurs {count} times in {mutant.path}, expected once")
    return source.replace(mutant.original, mutant.mutated)


def copy_tracked_files(destination: str) -> None:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, check=True, capture_output=True).stdout
    for name in names.decode().split("\0"):
        if not name or not os.path.isfile(os.path.join(REPO_ROOT, name)):
            continue
        target = os.path.join(destination, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(REPO_ROOT, name), target)


def run_tests(copy_dir: str, tests, timeout_s: int) -> tuple[bool, str, float]:
    """(passed, first failing test or '', seconds); the copy comes first on PYTHONPATH, ahead of
    the editable install."""
    env = dict(os.environ, PYTHONPATH=copy_dir + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=copy_dir, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, "timeout", time.perf_counter() - start
    seconds = time.perf_counter() - start
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    if proc.returncode == 0:
        return True, "", seconds
    return False, failed[0] if failed else f"exit {proc.returncode}", seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated mutant names (default: all)")
    parser.add_argument("--timeout_s", type=int, default=900, help="per mutant's pytest run")
    parser.add_argument("--baseline_timeout_s", type=int, default=3600, help="the unmutated run over every listed test")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only.split(",")]
    unknown = set(filter(None, args.only.split(","))) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants {sorted(unknown)}; known: {[m.name for m in MUTANTS]}")

    with tempfile.TemporaryDirectory(prefix="titok_var_mutants_") as copy_dir:
        copy_tracked_files(copy_dir)
        probe = subprocess.run([sys.executable, "-c", "import titok_var; print(titok_var.__file__)"], cwd=copy_dir,
                               env=dict(os.environ, PYTHONPATH=copy_dir), capture_output=True, text=True, check=True)
        if not probe.stdout.strip().startswith(copy_dir):
            raise SystemExit(f"the copy's titok_var is shadowed by {probe.stdout.strip()}")
        baseline_tests = sorted({t for m in chosen for t in m.tests})
        passed, failure, seconds = run_tests(copy_dir, baseline_tests, args.baseline_timeout_s)
        print(f"baseline ({len(baseline_tests)} test files or ids): {'pass' if passed else 'FAIL ' + failure} in {seconds:.0f} s",
              flush=True)
        if not passed:
            return 1
        rows = []
        for mutant in chosen:
            path = os.path.join(copy_dir, mutant.path)
            with open(path) as f:
                source = f.read()
            with open(path, "w") as f:
                f.write(mutate_source(source, mutant))
            try:
                passed, failure, seconds = run_tests(copy_dir, mutant.tests, args.timeout_s)
            finally:
                with open(path, "w") as f:
                    f.write(source)
            rows.append((mutant, passed, failure, seconds))
            print(f"{mutant.name}: {'SURVIVED' if passed else 'caught by ' + failure} ({seconds:.0f} s)", flush=True)

    print("\n| mutant | file | result | first failing test |\n|---|---|---|---|")
    for mutant, passed, failure, _ in rows:
        print(f"| `{mutant.name}` | `{mutant.path}` | {'survived' if passed else 'caught'} | {failure or '-'} |")
    survivors = sum(passed for _, passed, _, _ in rows)
    print(f"\n{len(rows) - survivors} of {len(rows)} mutants caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
