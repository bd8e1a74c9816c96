"""Convert the perceptual-loss networks' torch weights into `titok_var` params.

* `lpips`: torchvision VGG16 (IMAGENET1K_V1) for the trunk plus the LPIPS lin heads ->
  `titok_var.models.lpips.LPIPS`. Only `features.*` of the VGG16 file is used (its `classifier.*`
  is ignored). A full taming/TiTok LPIPS module state dict (`net.slice{s}.{i}.*`,
  `scaling_layer.*`, `lin{k}.model.1.weight`) is accepted as --input too, without --lin.
* `convnext_s`: torchvision convnext_small (IMAGENET1K_V1) -> `titok_var.models.convnext.ConvNeXt`.

Files to fetch:

    vgg16-397923af.pth           https://download.pytorch.org/models/vgg16-397923af.pth
    vgg.pth (LPIPS lin heads)    https://heibox.uni-heidelberg.de/f/607503859c864bc1b30b/?dl=1
                                 (md5 d507d7349b931f0638a25a48a722f98a; richzhang/PerceptualSimilarity's
                                 lpips/weights/v0.1/vgg.pth holds the same keys)
    convnext_small-0c510722.pth  https://download.pytorch.org/models/convnext_small-0c510722.pth

Usage (.pth, .safetensors and torch-keyed .npz are read with numpy alone, no torch):

    python -m titok_var.tools.convert_perceptual --arch lpips \\
        --input vgg16-397923af.pth --lin vgg.pth --output DIR
    python -m titok_var.tools.convert_perceptual --arch convnext_s \\
        --input convnext_small-0c510722.pth --output DIR

They write DIR/lpips_vgg16.npz and DIR/convnext_small.npz (flat, "/"-joined parameter paths),
which `titok_var.losses.perceptual.make_perceptual_loss(kind, DIR)` loads.

Name mapping (ours -> torch): module names swap "_" for "." (`features_1_0/block_3` ->
`features.1.0.block.3`), except the LPIPS trunk `vgg/features_{i}` -> `features.{i}` and heads
`lin{k}` -> `lin{k}.model.1`; leaves `kernel`/`scale` -> `weight`, `bias` and `layer_scale` keep
their names. Layouts: conv (O, I, kh, kw) -> (kh, kw, I, O) (depthwise: (C, 1, 7, 7) -> (7, 7, 1, C)),
Linear (O, I) -> (I, O), ConvNeXt layer_scale (C, 1, 1) -> (C,).
"""

import argparse
import os
import re
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from titok_var.models.convnext import ConvNeXt
from titok_var.models.lpips import LPIPS, LPIPS_SCALE, LPIPS_SHIFT
from titok_var.tools.convert_var import save_params
from titok_var.weights import state_dicts
from titok_var.tools.state_dict_matching import abstract_param_shapes, describe, match_state_dict

ARCHS = ("lpips", "convnext_s")
OUTPUT_NAMES = {"lpips": "lpips_vgg16.npz", "convnext_s": "convnext_small.npz"}

VGG16_NAME = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
LPIPS_LIN_NAME = "vgg.pth"
LPIPS_LIN_URL = "https://heibox.uni-heidelberg.de/f/607503859c864bc1b30b/?dl=1"
LPIPS_LIN_MD5 = "d507d7349b931f0638a25a48a722f98a"
CONVNEXT_SMALL_NAME = "convnext_small-0c510722.pth"
CONVNEXT_SMALL_URL = "https://download.pytorch.org/models/convnext_small-0c510722.pth"

_LPIPS_SLICE_KEY = re.compile(r"net\.slice\d\.(\d+)\.(weight|bias)")
_LIN_MODULE = re.compile(r"lin\d+")
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "layer_scale": "layer_scale"}


def default_model(arch: str) -> nn.Module:
    """The released configuration of `arch`."""
    _check_arch(arch)
    return LPIPS() if arch == "lpips" else ConvNeXt()


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown perceptual network {arch!r}; expected one of {ARCHS}")


def param_shapes(arch: str, model: nn.Module | None = None) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flat {path: shape} of the params of `model` (default: the released one); nothing is computed."""
    model = default_model(arch) if model is None else model
    images = jnp.zeros((1, model.min_size, model.min_size, 3), jnp.float32)
    inputs = (images, images) if arch == "lpips" else (images,)
    return abstract_param_shapes(model, *inputs)


def torch_key(arch: str, path: tuple[str, ...]) -> str:
    """Our parameter path -> its key in the official state dict."""
    *modules, leaf = path
    if leaf not in _LEAF_TO_TORCH:
        raise KeyError(f"no torch name for parameter {'/'.join(path)}")
    parts = []
    for module in modules:
        if arch == "lpips" and module == "vgg":
            continue  # the trunk's keys are those of torchvision's vgg16 (`features.{i}`)
        if arch == "lpips" and _LIN_MODULE.fullmatch(module):
            parts.append(f"{module}.model.1")  # index 0 of the official Sequential is the Dropout
        else:
            parts.append(module.replace("_", "."))
    return ".".join([*parts, _LEAF_TO_TORCH[leaf]])


def torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the torch tensor holding our parameter of `shape`."""
    leaf = path[-1]
    if leaf == "kernel" and len(shape) == 4:  # (kh, kw, I, O) -> (O, I, kh, kw)
        return (shape[3], shape[2], shape[0], shape[1])
    if leaf == "kernel" and len(shape) == 2:  # (I, O) -> (O, I)
        return (shape[1], shape[0])
    if leaf == "layer_scale":
        return (shape[0], 1, 1)
    return tuple(shape)


def from_torch_layout(path: tuple[str, ...], array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Torch tensor -> our layout for the parameter at `path` whose shape is `shape`."""
    array = np.asarray(array)
    leaf = path[-1]
    if leaf == "kernel" and len(shape) == 4:
        return array.transpose(2, 3, 1, 0)
    if leaf == "kernel" and len(shape) == 2:
        return array.T
    if leaf == "layer_scale":
        return array.reshape(shape)
    return array


def expected_torch_shapes(arch: str, model: nn.Module | None = None) -> dict[str, tuple[int, ...]]:
    """Every key the official state dict(s) must hold, with its torch shape."""
    return {torch_key(arch, path): torch_shape(path, shape) for path, shape in param_shapes(arch, model).items()}


def _match(arch: str, state_dict: Mapping[str, np.ndarray], model, ignored, source: str) -> dict:
    match = match_state_dict(
        state_dict, param_shapes(arch, model), lambda path: torch_key(arch, path), torch_shape,
        from_torch_layout, ignored=ignored,
    )
    if not match.ok:
        raise ValueError(f"state dict does not match {source}: " + match.problems())
    return match.nested_params()


def _lpips_trunk_and_heads(vgg_state_dict, lin_state_dict) -> dict[str, np.ndarray]:
    """One torchvision-keyed dict from the VGG16 and lin state dicts (or a full LPIPS module's)."""
    combined = dict(vgg_state_dict)
    if lin_state_dict is not None:
        clashes = sorted(set(combined) & set(lin_state_dict))
        if clashes:
            raise ValueError(f"the VGG16 and lin state dicts both hold {describe('keys', clashes)}")
        combined.update(lin_state_dict)
    out = {}
    for key, value in combined.items():
        if m := _LPIPS_SLICE_KEY.fullmatch(key):  # taming LPIPS: slices keep torchvision's indices
            key = f"features.{m.group(1)}.{m.group(2)}"
            if key in combined or key in out:
                raise ValueError(f"state dict holds both {key} and its LPIPS alias net.slice*.{key[9:]}")
        elif key.startswith("scaling_layer."):
            expected = LPIPS_SHIFT if key.endswith("shift") else LPIPS_SCALE
            if not np.allclose(np.asarray(value).reshape(-1), expected, atol=1e-6):
                raise ValueError(f"{key} is {np.asarray(value).reshape(-1)}, not the LPIPS constants {expected}")
            continue  # fixed constants of LPIPS, built into the model
        out[key] = value
    return out


def convert_lpips(vgg_state_dict: Mapping[str, np.ndarray], lin_state_dict: Mapping[str, np.ndarray] | None = None,
                  model: LPIPS | None = None) -> dict:
    """torchvision vgg16 state dict + LPIPS lin state dict -> nested float32 params of `model`
    (default: the released LPIPS-VGG16). Raises ValueError naming every missing, unexpected and
    mis-shaped key."""
    state_dict = _lpips_trunk_and_heads(vgg_state_dict, lin_state_dict)
    source = (f"LPIPS-VGG16 (trunk features.* from {VGG16_NAME}, heads lin{{k}}.model.1.weight from "
              f"{LPIPS_LIN_NAME}, passed with --lin)")
    return _match("lpips", state_dict, model, lambda key: key.startswith("classifier."), source)


def convert_convnext(state_dict: Mapping[str, np.ndarray], model: ConvNeXt | None = None) -> dict:
    """torchvision convnext state dict -> nested float32 params of `model` (default: convnext_small).
    Raises ValueError naming every missing, unexpected and mis-shaped key."""
    return _match("convnext_s", state_dict, model, lambda key: False, f"torchvision convnext_small ({CONVNEXT_SMALL_NAME})")


def converted_path(arch: str, directory: str) -> str:
    """Where the converter writes (and the loss reads) the params of `arch` inside `directory`."""
    _check_arch(arch)
    return os.path.join(os.fspath(directory), OUTPUT_NAMES[arch])


def fetch_instructions(arch: str, directory: str = "DIR") -> str:
    """Which torch files to fetch for `arch` and the command converting them into `directory`."""
    _check_arch(arch)
    command = "python -m titok_var.tools.convert_perceptual"
    if arch == "lpips":
        fetch = (f"  {VGG16_NAME}  {VGG16_URL}  (torchvision VGG16 trunk)\n"
                 f"  {LPIPS_LIN_NAME}  {LPIPS_LIN_URL}  (LPIPS lin heads, md5 {LPIPS_LIN_MD5})\n")
        convert = f"  {command} --arch lpips --input {VGG16_NAME} --lin {LPIPS_LIN_NAME} --output {directory}\n"
    else:
        fetch = f"  {CONVNEXT_SMALL_NAME}  {CONVNEXT_SMALL_URL}  (torchvision convnext_small IMAGENET1K_V1)\n"
        convert = f"  {command} --arch convnext_s --input {CONVNEXT_SMALL_NAME} --output {directory}\n"
    return (
        f"Fetch\n{fetch}and convert once (no torch needed; .safetensors and torch-keyed .npz work too):\n{convert}"
    )


def missing_weights_message(arch: str, path: str | None) -> str:
    """Error text for converted weights of `arch` that are absent (path None: none was given)."""
    _check_arch(arch)
    if path is None:
        where, directory = "not given (no weights path)", "DIR"
    else:
        where, directory = f"not found at {path!r}", os.path.dirname(path) or "."
    return (
        f"{arch} weights ({OUTPUT_NAMES[arch]}) {where}. " + fetch_instructions(arch, directory)
        + "then pass that directory as the weights path (tests: random_init=True)."
    )


def load_params(arch: str, path: str, model: nn.Module | None = None) -> dict:
    """Params of `arch` from a converted flat .npz (or a state dict converted on the fly), checked
    against `model` (default: the released configuration)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(missing_weights_message(arch, path))
    if path.endswith(".npz"):
        with np.load(path) as data:
            keys = list(data.files)
            if keys and all("/" in k for k in keys):
                flat = {tuple(k.split("/")): np.asarray(data[k], np.float32) for k in keys}
                _check_flat(arch, flat, param_shapes(arch, model), path)
                return traverse_util.unflatten_dict(flat)
    state_dict = read_state_dict(arch, path)
    return convert_lpips(state_dict, None, model) if arch == "lpips" else convert_convnext(state_dict, model)


def _check_flat(arch: str, flat: dict, expected: dict, path: str) -> None:
    got = {p: tuple(v.shape) for p, v in flat.items()}
    missing = sorted("/".join(p) for p in set(expected) - set(got))
    unexpected = sorted("/".join(p) for p in set(got) - set(expected))
    mismatched = [f"{'/'.join(p)} {got[p]} (expected {expected[p]})"
                  for p in sorted(set(got) & set(expected)) if got[p] != expected[p]]
    problems = [describe(kind, items) for kind, items in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)) if items]
    if problems:
        raise ValueError(f"{path} does not match the {arch} params: " + "; ".join(problems))


def read_state_dict(arch: str, path: str) -> dict[str, np.ndarray]:
    """State dict of a .pth (read without torch), .safetensors or torch-keyed .npz; a missing file
    names what to fetch."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found. " + fetch_instructions(arch))
    return state_dicts.read_state_dict(path)


def convert_files(arch: str, input_path: str, output_dir: str, lin_path: str | None = None,
                  model: nn.Module | None = None) -> tuple[dict, str]:
    """Reads, converts and saves DIR/<OUTPUT_NAMES[arch]>; returns (params, path written)."""
    _check_arch(arch)
    if lin_path is not None and arch != "lpips":
        raise ValueError("--lin only applies to --arch lpips")
    state_dict = read_state_dict(arch, input_path)
    if arch == "lpips":
        lin = read_state_dict(arch, lin_path) if lin_path is not None else None
        params = convert_lpips(state_dict, lin, model)
    else:
        params = convert_convnext(state_dict, model)
    os.makedirs(output_dir, exist_ok=True)
    return params, save_params(params, converted_path(arch, output_dir))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Convert LPIPS-VGG16 / ConvNeXt-S torch weights to titok_var .npz.")
    parser.add_argument("--arch", required=True, choices=ARCHS)
    parser.add_argument("--input", required=True,
                        help=f"{VGG16_NAME} (lpips) or {CONVNEXT_SMALL_NAME} (convnext_s), or a torch-keyed .npz")
    parser.add_argument("--lin", help=f"LPIPS lin heads ({LPIPS_LIN_NAME}); lpips only")
    parser.add_argument("--output", required=True, help="directory to write the converted .npz into")
    args = parser.parse_args(argv)
    params, written = convert_files(args.arch, args.input, args.output, args.lin)
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    print(f"wrote {written}: {count:,} parameters")


if __name__ == "__main__":
    main()
