"""Encodes a stage-1 config's training images once with the frozen MaskGIT-VQGAN (proxy codes).

  python -m titok_var.tools.precompute_proxy_codes --config configs/titok_l32.py:stage1 \
      --config.proxy.vqgan_weights=/ckpt/maskgit_vqgan.npz --config.proxy.precomputed_dir=/data/proxy_l32

Then train with the same config, `proxy.precomputed_dir` and `data.random_crop=False`: each step
reads the codes of its centre crops (mirrored ones when data.random_flip flips them) instead of
running the VQGAN encoder. Shards are per process and atomic; a restart skips finished shards.
"""

import os

import jax
import numpy as np
from absl import app, flags
from jax.sharding import Mesh
from ml_collections import config_flags

from titok_var import logs
from titok_var.data import proxy_code_table
from titok_var.models.maskgit_vqgan import MaskGitVQGAN
from titok_var.tasks.titok_stages import ProxyCodeTask, load_vqgan_params
from titok_var.tools import pretokenize


def precompute_proxy_codes(config, *, split: str = "train", process_index: int | None = None,
                           process_count: int | None = None, num_workers: int = 8) -> list:
    """Writes this process's shards of proxy codes under config.proxy.precomputed_dir."""
    if config.model_name != "titok_stage1":
        raise ValueError(f"proxy codes are the targets of TiTok stage 1; this is a {config.model_name!r} config")
    output_dir = config.proxy.get("precomputed_dir", "")
    if not output_dir:
        raise ValueError("set config.proxy.precomputed_dir to the folder the proxy codes go to")
    if config.proxy.get("random_init", False):
        raise ValueError("proxy.random_init draws a new VQGAN for every run; pre-computed codes need "
                         "proxy.vqgan_weights (a converted weights file)")
    task = ProxyCodeTask(config)  # checks the VQGAN's code grid against TiTok's head
    vqgan_params = load_vqgan_params(config.proxy, task.vqgan)
    mesh = Mesh(np.array(jax.local_devices()), ("data",))
    encode = pretokenize.make_encoder(
        lambda params, images: task.vqgan.apply({"params": params}, images, method=MaskGitVQGAN.encode).reshape(
            images.shape[0], -1), mesh)
    if (jax.process_index() if process_index is None else process_index) == 0:
        proxy_code_table.write_description(output_dir, proxy_code_table.expected_description(config))
    return pretokenize.encode_split(
        lambda images: encode(vqgan_params, images), config.data, output_dir, split,
        batch_size=config.proxy.get("precompute_batch_size", 256),
        shard_size=config.proxy.get("precompute_shard_size", 10_000), flips=True, num_workers=num_workers,
        process_index=process_index, process_count=process_count)


def main(argv, config_flag, distributed_flag):
    del argv
    from titok_var import distributed

    distributed.initialize(None, 1, 0, distributed_flag.value)
    config = config_flag.value
    paths = precompute_proxy_codes(config, num_workers=config.train.get("data_workers", 8))
    print(f"process {jax.process_index()}: {len(paths)} proxy-code shards in "
          f"{os.path.abspath(config.proxy.precomputed_dir)}")


def define_flags(flag_values=flags.FLAGS):
    """Command-line flags, defined only when run as a program (importing must not claim --config)."""
    fv = dict(flag_values=flag_values)
    return (config_flags.DEFINE_config_file("config", None, "TiTok stage-1 config.", **fv),
            flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() auto-detect (SLURM, TPU VMs): "
                              "each host encodes its share of the shards.", **fv))


if __name__ == "__main__":
    logs.configure()  # TITOK_VAR_VERBOSE_LOGS=1 shows the libraries' INFO lines
    _config_flag, _distributed_flag = define_flags()
    flags.mark_flag_as_required("config")
    app.run(lambda argv: main(argv, _config_flag, _distributed_flag))
