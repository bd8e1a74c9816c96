"""Runs the README's released-weights command blocks on random official-layout files.

The README shows the commands for the released checkpoints. Here each line runs as written, in a
scratch folder, with these substitutions only (so the commands themselves cannot drift):
- `configs/NAME.py[:ARG]` -> the repository's file with `runlocal` added to ARG (a narrow model of
  the same official layout on 32 px `shapes`);
- `python main.py` -> the repository's main.py;
- a `convert` of a released model also gets `--config` with that runlocal config, because the
  random file holds the narrow model;
- the released files named in the commands are written first, with random weights under the
  official key names and shapes and in the official formats (torch zip `.bin` / `.pth`).
"""

import os
import re
import shlex
import subprocess
import sys
import time

import jax
import numpy as np
from flax import traverse_util

from tests.subprocess_env import cpu_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")

# convert --arch -> the runlocal config whose model the random file holds
NARROW_CONFIGS = {
    "titok_l32": "configs/titok_l32.py:stage2,runlocal",
    "maskgit_l32": "configs/maskgit_titok_l32.py:runlocal",
    "var_vqvae": "configs/var_vqvae.py:runlocal",
    "var_d16": "configs/var_d16.py:runlocal",
    "maskgit_vqgan": "configs/titok_l32.py:stage1,runlocal",
}


def readme_commands(block: str) -> list[str]:
    """The command lines of the ```bash block after `<!-- commands: BLOCK -->` in README.md."""
    text = open(README).read()
    marker = f"<!-- commands: {block} -->"
    if marker not in text:
        raise AssertionError(f"README.md has no {marker}")
    body = text.split(marker, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in body.strip().splitlines() if line.strip() and not line.startswith("#")]


def localise(command: str) -> list[str]:
    """The README line as argv for this checkout (see the module docstring)."""
    argv = shlex.split(command)
    out = []
    for word in argv:
        if word == "main.py":
            word = os.path.join(REPO, "main.py")
        elif m := re.fullmatch(r"configs/(\w+)\.py(?::(.*))?", word):
            arg = ",".join(filter(None, [m.group(2), "runlocal"]))
            word = os.path.join(REPO, "configs", f"{m.group(1)}.py") + f":{arg}"
        out.append(word)
    if "titok_var.tools.convert" in argv and "--arch" in argv:
        arch = argv[argv.index("--arch") + 1]
        if arch in NARROW_CONFIGS:
            out += ["--config", os.path.join(REPO, NARROW_CONFIGS[arch])]
    return [sys.executable if w == "python" else w for w in out]


def run(command: str, cwd: str) -> str:
    argv = localise(command)
    # One device, the test run's compile settings and compilation cache (tests/conftest.py).
    env = cpu_env(device_count=1, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    print(f"{time.monotonic() - start:6.1f}s  {command}")
    if done.returncode != 0:
        raise AssertionError(f"README command failed ({done.returncode}): {command}\n{done.stderr[-4000:]}")
    return done.stdout


def random_params(abstract, seed: int) -> dict:
    """Random values with init-like scales (weights ~ 1/sqrt(fan_in), norm scales ~ 1), so the
    random models produce finite, non-constant outputs."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in traverse_util.flatten_dict(abstract).items():
        shape = tuple(leaf.shape)
        if path[-1] in ("scale", "weight") or (len(shape) == 1 and "norm" in "/".join(path)):
            value = 1.0 + 0.05 * rng.standard_normal(shape)
        elif path[-1] == "bias" or len(shape) <= 1:
            value = 0.02 * rng.standard_normal(shape)
        else:
            fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            value = rng.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        flat[path] = value.astype(np.float32)
    return traverse_util.unflatten_dict(flat)


def write_released_file(arch: str, path: str, seed: int = 0) -> dict:
    """A random checkpoint of the narrow runlocal model in `arch`'s official layout and format."""
    from titok_var import registry
    from titok_var.sharding.logical import strip_partitioning
    from titok_var.tools import convert, official_layout
    from titok_var.weights import state_dicts

    config = convert.load_config_file(os.path.join(REPO, NARROW_CONFIGS[arch]))
    if arch == "maskgit_vqgan":
        from titok_var.models.maskgit_vqgan import PIXEL_DECODER_PRESETS, MaskGitVQGAN

        model = MaskGitVQGAN(**PIXEL_DECODER_PRESETS[config.proxy.preset])
        abstract = jax.eval_shape(model.init, jax.random.key(0),
                                  jax.ShapeDtypeStruct((1, model.image_size, model.image_size, 3), np.float32))
        abstract = strip_partitioning(abstract["params"])
    else:
        task = registry.get_task(config)
        model = task.model
        abstract = strip_partitioning(jax.eval_shape(task.init_params, jax.random.key(0)))
    state_dict = official_layout.to_official(arch, model, random_params(abstract, seed))
    state_dicts.write_state_dict(state_dict, path)
    return state_dict


def write_inception_file(path: str) -> None:
    """pytorch-fid's Inception in its official layout and format, with our initial weights."""
    from titok_var.evaluation import inception
    from titok_var.tools import official_layout
    from titok_var.weights import state_dicts

    params = jax.device_get(inception.init_params(seed=0))
    state_dicts.write_state_dict(official_layout.to_official("inception_fid", None, params), path)


def write_reference_statistics(path: str, inception_npz: str) -> None:
    """Stands in for ADM's reference batch: statistics of 64 `shapes` images."""
    from titok_var.data import shapes
    from titok_var.tools import generative_eval

    rng = np.random.default_rng(0)
    images = np.stack([shapes.render_example(i % 16, 32, rng) for i in range(64)])
    generative_eval.compute_reference_statistics([images], inception_npz, path, batch_size=32)
