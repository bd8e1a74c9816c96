"""configs/var_d16.py ... var_d36_512.py against the official training commands, field by field,
and the weight-decay ramp against the official curve.

Source: FoundationVision/VAR README.md, "Training Scripts" (the five torchrun commands below) and
utils/arg_util.py (the defaults every command keeps); utils/lr_control.py::lr_wd_annealing for the
schedules; utils/data.py for the data (hflip off). `--fp16=1` (fp16 autocast) maps to bfloat16 here.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import var_d16, var_d20, var_d24, var_d30, var_d36_512
from configs.var_model import PATCH_NUMS_256, PATCH_NUMS_512
from titok_var.training import optimizer

OFFICIAL_COMMANDS = {
    var_d16: "--depth=16 --bs=768 --ep=200 --fp16=1 --alng=1e-3 --wpe=0.1",
    var_d20: "--depth=20 --bs=768 --ep=250 --fp16=1 --alng=1e-3 --wpe=0.1",
    var_d24: "--depth=24 --bs=768 --ep=350 --tblr=8e-5 --fp16=1 --alng=1e-4 --wpe=0.01",
    var_d30: "--depth=30 --bs=1024 --ep=350 --tblr=8e-5 --fp16=1 --alng=1e-5 --wpe=0.01 --twde=0.08",
    var_d36_512: "--depth=36 --saln=1 --pn=512 --bs=768 --ep=350 --tblr=8e-5 --fp16=1 --alng=5e-6 --wpe=0.01 "
                 "--twde=0.08",
}
# utils/arg_util.py defaults (twde = twde or twd; wp = ep / 50; pn "1_2_3_4_5_6_8_10_13_16" for 256).
OFFICIAL_DEFAULTS = dict(tblr=1e-4, twd=0.05, twde=0.0, wp0=0.005, sche="lin0", tclip=2.0, ls=0.0, aln=0.5,
                         hd=0.02, saln=0, pn="256", cdr=0.1, hflip=0)
IMAGENET_TRAIN_IMAGES = 1_281_167


def official_args(command: str) -> dict:
    args = dict(OFFICIAL_DEFAULTS)
    for item in command.split():
        key, value = item[2:].split("=")
        args[key] = value if key == "pn" else float(value)
    args["twde"] = args["twde"] or args["twd"]
    return args


@pytest.mark.parametrize("module", list(OFFICIAL_COMMANDS), ids=lambda m: m.__name__.split(".")[-1])
def test_config_is_the_official_command(module):
    args = official_args(OFFICIAL_COMMANDS[module])
    config = module.get_config()
    batch, epochs = int(args["bs"]), int(args["ep"])
    iters_per_epoch = math.ceil(IMAGENET_TRAIN_IMAGES / batch)  # DistInfiniteBatchSampler fills the last batch
    peak = args["tblr"] * batch / 256
    assert config.model.depth == int(args["depth"])
    assert config.train.global_batch_size == batch
    assert config.train.num_steps == iters_per_epoch * epochs
    assert config.optimizer.warmup_steps == round(epochs / 50 * iters_per_epoch)
    assert config.optimizer.schedule == "var_lin0" and args["sche"] == "lin0"
    assert optimizer.VAR_WARMUP_START == args["wp0"]
    assert config.optimizer.learning_rate == pytest.approx(peak)
    assert config.optimizer.end_learning_rate == pytest.approx(peak * args["wpe"])
    assert (config.optimizer.b1, config.optimizer.b2) == (0.9, 0.95)
    assert config.optimizer.grad_clip_norm == args["tclip"]
    assert config.optimizer.weight_decay == args["twd"]
    assert (config.optimizer.weight_decay_end or config.optimizer.weight_decay) == args["twde"]
    assert config.model.init_adaln == args["aln"] and config.model.init_head == args["hd"]
    assert config.model.init_adaln_gamma == args["alng"]
    assert config.model.shared_adaln == bool(args["saln"])
    assert tuple(config.model.patch_nums) == (PATCH_NUMS_512 if args["pn"] == "512" else PATCH_NUMS_256)
    assert config.loss.label_dropout == args["cdr"] and args["ls"] == 0.0  # no label smoothing here
    assert config.train.ema_decay == 0.0  # the official trainer keeps no EMA
    assert config.model.dtype == "bfloat16"  # --fp16=1
    image_data = config.tokenizer.image_data
    assert not image_data.random_flip and not args["hflip"]
    assert (image_data.resize_ratio, image_data.resize_filter) == (1.125, "lanczos")
    online = module.get_config("online").data
    assert online.random_crop and not online.random_flip


def official_weight_decay(it: int, max_it: int, wd: float, wd_end: float) -> float:
    """lr_wd_annealing: cur_wd = wd_end + (wd - wd_end) * (0.5 + 0.5 * cos(pi * it / (max_it - 1)))."""
    return wd_end + (wd - wd_end) * (0.5 + 0.5 * math.cos(math.pi * it / (max_it - 1)))


def test_weight_decay_ramps_as_the_official_curve_on_decayed_parameters_only():
    config = var_d30.get_config()
    schedule = optimizer.weight_decay_schedule(config)
    max_it = config.train.num_steps
    for it in (0, 1, 1000, max_it // 3, max_it // 2, max_it - 2, max_it - 1):
        assert float(schedule(it)) == pytest.approx(official_weight_decay(it, max_it, 0.05, 0.08), rel=1e-6)
    assert optimizer.weight_decay_schedule(var_d16.get_config()) == 0.05  # constant: a plain float

    # Through the optimizer: with zero gradients only decay moves a parameter (held at 1), by lr * wd(step).
    small = var_d30.get_config()
    small.train.num_steps = 11
    small.optimizer.update(warmup_steps=0, grad_clip_norm=1e9)
    tx = optimizer.build_optimizer(small)
    params = {"head": {"kernel": jnp.ones((2, 2))}, "pos_start": jnp.ones((1, 1, 2)), "bias": jnp.ones((2,))}
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    lr = optimizer.learning_rate_schedule(small)
    for step in range(11):
        updates, state = tx.update(zero, state, params)
        expected = -float(lr(step)) * official_weight_decay(step, 11, 0.05, 0.08)
        np.testing.assert_allclose(updates["head"]["kernel"], expected, rtol=1e-5)
        assert float(jnp.abs(updates["pos_start"]).max()) == 0.0 and float(jnp.abs(updates["bias"]).max()) == 0.0


def official_lin0_lr(it, peak, wp_it, max_it, wp0=0.005, wpe=0.1):
    """utils/lr_control.py::lr_wd_annealing with sche='lin0': warm-up from wp0, the peak for the
    first 5% of the post-warm-up span, then linear to wpe * peak at the last iteration."""
    if it < wp_it:
        return peak * (wp0 + (1 - wp0) * it / wp_it)
    passed = (it - wp_it) / (max_it - 1 - wp_it)
    if passed < 0.05:
        return peak
    return peak * (wpe + (1 - wpe) * (1 - passed) / 0.95)


def test_lin0_learning_rate_is_the_official_curve_over_a_d16_run():
    config = var_d16.get_config()
    schedule = optimizer.learning_rate_schedule(config)
    max_it, wp_it = config.train.num_steps, config.optimizer.warmup_steps
    assert (max_it, wp_it) == (333_800, 6_676)  # 1669 iterations per epoch x 200 epochs; 4 warm-up epochs
    for it in (0, 1, 3_000, wp_it - 1, wp_it, 15_000, 23_000, 23_100, max_it // 2, max_it - 2, max_it - 1):
        expected = official_lin0_lr(it, 3e-4, wp_it, max_it)
        assert float(schedule(it)) == pytest.approx(expected, rel=1e-5), it
    # The peak holds until 5% of the post-warm-up span (iteration 23,032), then decays.
    assert float(schedule(23_000)) == pytest.approx(3e-4, rel=1e-6)
    assert float(schedule(23_100)) < 3e-4 * (1 - 1e-4)
    assert float(schedule(max_it - 1)) == pytest.approx(3e-5, rel=1e-5)


def test_resuming_mid_ramp_continues_the_weight_decay_curve_exactly(tmp_path):
    # The ramp's step lives in the optimizer state: 3 updates, a save and restore through orbax,
    # 3 more equal 6 updates in one go, bit for bit; restarting from the parameters alone does not
    # (the step of the learning-rate and weight-decay curves and Adam's moments are in the state).
    import orbax.checkpoint as ocp

    small = var_d30.get_config()
    small.train.num_steps = 6
    small.optimizer.update(warmup_steps=0, grad_clip_norm=1e9)
    tx = optimizer.build_optimizer(small)
    params = {"head": {"kernel": jnp.full((2, 2), 1.0)}}
    grads = {"head": {"kernel": jnp.full((2, 2), 0.1)}}

    def run(state, params, steps):
        for _ in range(steps):
            updates, state = tx.update(grads, state, params)
            params = jax.tree.map(lambda p, u: p + u, params, updates)
        return state, params

    straight_state, straight = run(tx.init(params), params, 6)
    state, halfway = run(tx.init(params), params, 3)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "mid", {"state": state, "params": halfway})
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "mid", {"state": state, "params": halfway})
    _, resumed = run(restored["state"], restored["params"], 3)
    np.testing.assert_array_equal(resumed["head"]["kernel"], straight["head"]["kernel"])
    _, restarted = run(tx.init(halfway), halfway, 3)
    assert not np.array_equal(restarted["head"]["kernel"], straight["head"]["kernel"])
