"""One command for every weight converter of titok_var:

    python -m titok_var.tools.convert --arch ARCH --input FILE --output DIR [--lin vgg.pth]
    python -m titok_var.tools.convert --to_official --arch ARCH --export_dir E --output FILE [--dtype bfloat16]

ARCH picks the converter and the released configuration it builds:
  var_vqvae                          tools/convert_var.py              vae_ch160v4096z32.pth
  var_d16 var_d20 var_d24 var_d30    tools/convert_var_transformer.py  var_d{depth}.pth (256 px)
  var_d36                            tools/convert_var_transformer.py  var_d36.pth (512 px, shared AdaLN)
  maskgit_vqgan                      tools/convert_maskgit_vqgan.py    maskgit-vqgan-imagenet-f16-256.bin
  titok_l32 titok_b64 titok_s128 ... tools/convert_titok.py            tokenizer_titok_*.bin / model.safetensors
  maskgit_l32 maskgit_b64 maskgit_s128  tools/convert_maskgit.py       generator_titok_*.bin
  inception_fid                      tools/convert_inception.py        pt_inception-2015-12-05-6726825d.pth
  lpips convnext_s                   tools/convert_perceptual.py       vgg16-397923af.pth (+ --lin vgg.pth),
                                                                       convnext_small-0c510722.pth

Each converter's own CLI does the work; this writes what it wrote into DIR (DIR/<arch>.npz, except
maskgit_vqgan -> maskgit_vqgan.npz or pixel_decoder.npz, lpips -> lpips_vgg16.npz and convnext_s ->
convnext_small.npz, the names their loaders expect) and DIR/convert.json recording the arch, the
input file name, the written file and its parameter count, one record per written file.
"""

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import zipfile
from collections.abc import Callable

import numpy as np
from flax import traverse_util

from titok_var.tools.convert_titok import RELEASED_VARIANTS as TITOK_VARIANTS
from titok_var.weights import state_dicts

RECORD_FILE = "convert.json"


@dataclasses.dataclass(frozen=True)
class Arch:
    module: str  # converter module under titok_var.tools; its main(argv) is called
    flags: tuple[str, ...] = ()  # converter flags besides --input / --output
    output_is_dir: bool = False  # the converter takes DIR as --output (else DIR/<written>)
    written: str = ""  # file the converter writes into DIR; "" = <arch>.npz
    # converter module -> (released file name, download URL)
    source: Callable = lambda module: ("", "")


def _var_transformer(depth: int) -> Arch:
    return Arch(
        "convert_var_transformer", ("--depth", str(depth)) + (("--shared-adaln",) if depth == 36 else ()),
        output_is_dir=True, source=lambda m: (f"var_d{depth}.pth", m.CHECKPOINT_URL.format(depth=depth)),
    )


def _titok(variant: str) -> Arch:
    return Arch("convert_titok", ("--variant", variant), output_is_dir=True, source=lambda m: m.CHECKPOINTS[variant])


def _maskgit(variant: str) -> Arch:
    def source(module):
        name = module.CHECKPOINTS[variant]
        return name, module.RELEASE_URL.format(name)

    return Arch("convert_maskgit", ("--variant", variant), source=source)


ARCHS: dict[str, Arch] = {
    "var_vqvae": Arch("convert_var", source=lambda m: (m.CHECKPOINT_NAME, m.CHECKPOINT_URL)),
    **{f"var_d{d}": _var_transformer(d) for d in (16, 20, 24, 30, 36)},
    # Writes maskgit_vqgan.npz, or pixel_decoder.npz for a TiTok checkpoint's pixel decoder.
    "maskgit_vqgan": Arch("convert_maskgit_vqgan", output_is_dir=True,
                          source=lambda m: (m.CHECKPOINT_NAME, m.CHECKPOINT_URL)),
    **{variant: _titok(variant) for variant in TITOK_VARIANTS},
    **{f"maskgit_{v.replace('-', '').lower()}": _maskgit(v) for v in ("L-32", "B-64", "S-128")},
    "inception_fid": Arch("convert_inception", source=lambda m: (m.FID_WEIGHTS_FILENAME, m.FID_WEIGHTS_URL)),
    "lpips": Arch("convert_perceptual", ("--arch", "lpips"), output_is_dir=True, written="lpips_vgg16.npz",
                  source=lambda m: (m.VGG16_NAME, f"{m.VGG16_URL} (plus --lin {m.LPIPS_LIN_NAME}: {m.LPIPS_LIN_URL})")),
    "convnext_s": Arch("convert_perceptual", ("--arch", "convnext_s"), output_is_dir=True,
                       written="convnext_small.npz", source=lambda m: (m.CONVNEXT_SMALL_NAME, m.CONVNEXT_SMALL_URL)),
}


def arch_spec(arch: str) -> Arch:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    return ARCHS[arch]


def converter(arch: str):
    """The converter module of `arch` (imported on demand)."""
    return importlib.import_module(f"titok_var.tools.{arch_spec(arch).module}")


def download_source(arch: str) -> tuple[str, str]:
    """(released file name, where to download it) for `arch`."""
    return arch_spec(arch).source(converter(arch))


def _require_file(path: str, what: str, arch: str) -> None:
    if not os.path.isfile(path):
        name, url = download_source(arch)
        raise FileNotFoundError(
            f"{what} {path!r} not found; --arch {arch} converts {name}, released at {url}"
        )


@contextlib.contextmanager
def _output_dir(output_dir: str):
    """Creates `output_dir` for a conversion, and removes it again if the conversion fails and it
    was new: a bad input leaves nothing behind."""
    existed = os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    try:
        yield
    except BaseException:
        if not existed and not os.listdir(output_dir):
            os.rmdir(output_dir)
        raise


def _naming_input(input_path: str, arch: str, error: Exception) -> Exception:
    """The converter's error with the input file and arch in front, when it does not name them."""
    message = str(error)
    if input_path in message or os.path.basename(input_path) in message:
        return error
    return ValueError(f"{input_path} (--arch {arch}): {message}")


def count_parameters(npz_path: str) -> int:
    """Total size of the arrays of an uncompressed .npz, from their headers (no data is read)."""
    total = 0
    with zipfile.ZipFile(npz_path) as archive:
        for name in archive.namelist():
            with archive.open(name) as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, _ = read_header(f)
            total += int(np.prod(shape))
    return total


def load_config_file(spec: str):
    """`path/to/config.py[:arg]` -> its get_config(arg), as `main.py --config` reads it."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} not found")
    module_spec = importlib.util.spec_from_file_location("_titok_var_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def convert_for_config(arch: str, input_path: str, output_dir: str, config_spec: str) -> dict:
    """Converts `input_path` for the model of a config (e.g. `configs/titok_l32.py:stage2,runlocal`,
    a narrower model in the official layout) instead of the released one."""
    from titok_var import registry
    from titok_var.tools import official_layout
    from titok_var.tools.convert_var import save_params

    _require_file(input_path, "input file", arch)
    config = load_config_file(config_spec)
    if arch == "maskgit_vqgan":  # the frozen proxy-code VQGAN of a TiTok stage-1 config
        from titok_var.models.maskgit_vqgan import PIXEL_DECODER_PRESETS, MaskGitVQGAN

        model = MaskGitVQGAN(**PIXEL_DECODER_PRESETS[config.proxy.preset])
    else:
        model = registry.get_task(config).model
    try:
        params = official_layout.from_official(arch, state_dicts.read_state_dict(input_path), model)
    except ValueError as e:
        raise _naming_input(input_path, arch, e) from e
    with _output_dir(output_dir):
        written = save_params(params, os.path.join(output_dir, f"{arch}.npz"))
    record = {"arch": arch, "input": os.path.basename(input_path), "output": os.path.basename(written),
              "parameters": count_parameters(written), "converter": "titok_var.tools.official_layout",
              "config": config_spec}
    _add_record(output_dir, record)
    return record


def convert(arch: str, input_path: str, output_dir: str, lin: str | None = None) -> dict:
    """Runs the converter of `arch` on `input_path`, writing into `output_dir`; returns the record
    also written to DIR/convert.json."""
    spec = arch_spec(arch)
    input_path, output_dir = os.fspath(input_path), os.fspath(output_dir)
    _require_file(input_path, "input file", arch)
    extra = []
    if lin is not None:
        if arch != "lpips":
            raise ValueError(f"--lin (the LPIPS lin heads) only applies to --arch lpips, not {arch}")
        _require_file(lin, "LPIPS lin-heads file", arch)
        extra = ["--lin", os.fspath(lin)]
    written = os.path.join(output_dir, spec.written or f"{arch}.npz")
    output = output_dir if spec.output_is_dir else written
    with _output_dir(output_dir):
        try:
            returned = converter(arch).main([*spec.flags, "--input", input_path, "--output", output, *extra])
        except ValueError as e:
            raise _naming_input(input_path, arch, e) from e
    if isinstance(returned, str):  # converters that choose the file name report it
        written = returned
    if not os.path.isfile(written):
        raise RuntimeError(f"the {spec.module} converter did not write {written}")
    record = {
        "arch": arch,
        "input": os.path.basename(input_path),
        "output": os.path.basename(written),
        "parameters": count_parameters(written),
        "converter": f"titok_var.tools.{spec.module}",
    }
    if lin is not None:
        record["lin"] = os.path.basename(lin)
    _add_record(output_dir, record)
    return record


def read_records(output_dir: str) -> dict[str, dict]:
    """{written file name: record} of every conversion into `output_dir`."""
    path = os.path.join(output_dir, RECORD_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        records = json.load(f)
    if "arch" in records:  # one record, as written before conversions were merged
        records = {records["output"]: records}
    return records


def _add_record(output_dir: str, record: dict) -> None:
    """Keeps one record per written file, so several conversions can share a folder (LPIPS and
    ConvNeXt-S for the mixed perceptual loss)."""
    records = read_records(output_dir)
    records[record["output"]] = record
    path = os.path.join(output_dir, RECORD_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(records, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def export_to_official(arch: str, output: str, *, export_dir: str | None = None, converted: str | None = None,
                       dtype: str = "float32") -> dict:
    """Our weights (an export's parameters, or a converter's .npz) -> the official state dict of
    `arch`, written to `output` (.safetensors, .bin / .pth, or torch-keyed .npz) in `dtype`."""
    from titok_var.tools import official_layout

    arch_spec(arch)
    layout = official_layout.layout_for(arch)
    if (export_dir is None) == (converted is None):
        raise ValueError("--to_official reads exactly one of --export_dir (an export) and --input (a converted .npz)")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if export_dir is not None:
        from titok_var.tools.export import load_exported_to_host
        from titok_var.training.inference import EXPORT_CONFIG_FILE, read_export_json

        model_name = read_export_json(export_dir, EXPORT_CONFIG_FILE).get("model_name")
        if model_name not in layout.model_names:
            raise ValueError(f"{export_dir} holds a {model_name!r} model; --arch {arch} writes "
                             f"{' / '.join(layout.model_names) or 'no exported model'} weights")
        task, params, _ = load_exported_to_host(export_dir)
        model, source = task.model, os.path.abspath(export_dir)
    else:
        _require_file(converted, "converted weights", arch)
        model = official_layout.released_model(arch)
        with np.load(converted) as data:
            flat = {tuple(k.split("/")): np.asarray(data[k]) for k in data.files}
        params, source = traverse_util.unflatten_dict(flat), os.path.abspath(converted)
    state_dict = official_layout.to_official(arch, model, params)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    written = state_dicts.write_state_dict(state_dict, output, dtype=dtype)
    return {"arch": arch, "source": source, "output": os.path.abspath(written), "tensors": len(state_dict),
            "dtype": dtype}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="known archs: " + ", ".join(ARCHS)
    )
    parser.add_argument("--arch", required=True, help="which model the weights are for (see below)")
    parser.add_argument("--input", default=None, help="the released torch checkpoint (.pth/.bin/.safetensors), or a "
                                                      "torch-keyed .npz; with --to_official: a converted .npz")
    parser.add_argument("--output", required=True, help="directory for the converted .npz and convert.json "
                                                        "(--to_official: the official file to write)")
    parser.add_argument("--lin", default=None, help="lpips only: the LPIPS lin heads (vgg.pth)")
    parser.add_argument("--config", default=None,
                        help="convert for the model of this config file (path.py[:arg]) instead of the released one")
    parser.add_argument("--to_official", action="store_true",
                        help="the other way: our weights (--export_dir, or a converted .npz as --input) -> the "
                             "official state dict in --output FILE (.safetensors, .bin/.pth or .npz)")
    parser.add_argument("--export_dir", default=None, help="--to_official: an export (EMA parameters of a run, or imported)")
    parser.add_argument("--dtype", default="float32", help="--to_official: float32 (default), bfloat16 or float16")
    return parser


def main(argv=None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.arch not in ARCHS:
        parser.error(f"unknown --arch {args.arch!r}; known: {', '.join(ARCHS)}")
    if args.to_official:
        record = export_to_official(args.arch, args.output, export_dir=args.export_dir, converted=args.input,
                                    dtype=args.dtype)
        print(f"{args.arch}: {record['tensors']} tensors ({record['dtype']}) -> {record['output']}")
        return record
    if args.input is None:
        parser.error("--input is required (the released checkpoint)")
    if args.config:
        record = convert_for_config(args.arch, args.input, args.output, args.config)
        print(f"{args.arch}: {record['parameters']:,} parameters -> {os.path.join(args.output, record['output'])}")
        return record
    record = convert(args.arch, args.input, args.output, args.lin)
    print(f"{args.arch}: {record['parameters']:,} parameters -> {os.path.join(args.output, record['output'])}")
    return record


if __name__ == "__main__":
    main()
