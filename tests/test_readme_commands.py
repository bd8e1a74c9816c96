"""Every command line in README.md's bash blocks parses with the real flag definitions: the flags
exist, the config file loads with its argument and every `--config.x=y` override applies (the
released-weights blocks are also run end to end, tests/test_released_*_commands.py)."""

import os
import re
import shlex
import sys

import ml_collections
import pytest
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_command_lines() -> list[str]:
    text = open(os.path.join(REPO, "README.md")).read()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _program(argv: list[str]) -> str:
    if argv[:2] == ["python", "main.py"]:
        return "main.py"
    if argv[:2] == ["python", "-m"]:
        return argv[2]
    return argv[0]


def _parse_absl(define, argv: list[str]):
    """Parses argv with a fresh flag set made by `define(flag_values)`; config paths are repo-relative."""
    values = flags.FlagValues()
    holders = define(values)
    cwd, sys_argv = os.getcwd(), sys.argv
    os.chdir(REPO)
    sys.argv = argv  # config_flags finds the --config.x overrides in sys.argv
    try:
        values(argv)
    finally:
        os.chdir(cwd)
        sys.argv = sys_argv
    return holders


COMMANDS = readme_command_lines()


def test_the_readme_has_the_command_blocks_this_test_reads():
    programs = {_program(shlex.split(line)) for line in COMMANDS}
    assert {"main.py", "titok_var.tools.convert", "titok_var.tools.pretokenize", "titok_var.tools.var_edit",
            "titok_var.tools.precompute_proxy_codes"} <= programs


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_line_parses(line):
    argv = shlex.split(line)
    program = _program(argv)
    if argv[0] == "pip":
        return
    if argv[0] == "bash":
        assert os.path.isfile(os.path.join(REPO, argv[1])), argv[1]
        return
    if program == "titok_var.tools.convert":
        from titok_var.tools import convert

        args = convert.build_parser().parse_args(argv[3:])
        assert args.arch in convert.ARCHS
        return
    if program == "main.py":
        import importlib.util

        spec = importlib.util.spec_from_file_location("titok_var_main", os.path.join(REPO, "main.py"))
        main = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(main)
        holders = _parse_absl(main.define_flags, ["main.py", *argv[2:]])
    else:
        import importlib

        module = importlib.import_module(program)
        holders = _parse_absl(module.define_flags, [program, *argv[3:]])
        if isinstance(holders, tuple):
            holders = {"config": holders[0]}
    config = holders["config"].value
    assert isinstance(config, ml_collections.ConfigDict)
    for override in (w for w in argv if w.startswith("--config.")):
        key, value = override[len("--config."):].split("=", 1)
        node = config
        for part in key.split("."):
            node = node[part]
        if isinstance(node, bool):
            assert node == {"true": True, "false": False}[value.lower()], (override, node)
        else:
            assert str(node) == value or node == type(node)(value), (override, node)


PAPER_CONFIGS = sorted(name[:-3] for name in os.listdir(os.path.join(REPO, "configs"))
                       if name.endswith(".py") and name not in ("__init__.py", "common.py", "titok_model.py",
                                                                 "var_model.py", "maskgit_model.py"))


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_data_folders_of_every_config_are_settable_from_the_command_line(name):
    """The README's `--config.data.data_dir=/path` form works for every config (a None default
    could not be overridden), and so does the tokenizer's image folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("titok_var_main", os.path.join(REPO, "main.py"))
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    argv = ["main.py", "--config", f"configs/{name}.py", "--config.data.data_dir=/data/x"]
    probe = _parse_absl(main.define_flags, argv[:3])["config"].value
    if "tokenizer" in probe and "image_data" in probe.tokenizer:
        argv.append("--config.tokenizer.image_data.data_dir=/data/images")
    config = _parse_absl(main.define_flags, argv)["config"].value
    assert config.data.data_dir == "/data/x"
    if len(argv) == 5:
        assert config.tokenizer.image_data.data_dir == "/data/images"
