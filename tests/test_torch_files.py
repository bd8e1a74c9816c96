"""The torch-free checkpoint reader/writer against files written by torch itself
(tests/fixtures/make_torch_fixtures.py), safetensors round trips, and refusal of unsafe or broken files."""

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from titok_var.weights import safetensors_format, state_dicts, torch_format

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "torch_files")


def expected_arrays():
    with np.load(os.path.join(FIXTURES, "expected.npz")) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("name", ["state_dict_zip.pth", "state_dict_legacy.pth", "training_checkpoint_zip.pth"])
def test_reads_every_tensor_torch_wrote(name):
    loaded = state_dicts.read_state_dict(os.path.join(FIXTURES, name))
    expected = expected_arrays()
    assert list(loaded) == list(expected)  # torch's key order is kept
    for key, want in expected.items():
        got = loaded[key]
        assert got.shape == want.shape, key
        # float16 stays float16, bfloat16 widens exactly to float32; the values are torch's bits.
        source = {"float16": np.float16, "float64": np.float64, "int64": np.int64, "uint8": np.uint8}
        assert got.dtype == source.get(key, np.float32), key
        np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=key)


def test_training_checkpoint_keeps_its_other_entries():
    obj = torch_format.load(os.path.join(FIXTURES, "training_checkpoint_zip.pth"))
    assert obj["epoch"] == 3 and obj["args"] == {"depth": 16, "name": "var"}


@pytest.mark.parametrize("suffix,dtype", [(".bin", None), (".pth", "bfloat16"), (".safetensors", None),
                                          (".safetensors", "bfloat16"), (".npz", None)])
def test_written_files_read_back(tmp_path, suffix, dtype):
    arrays = {"w.a": np.float32([[1.0, 2.0 ** -9 + 1.0, -3.25]]), "b": np.arange(4, dtype=np.int64),
              "empty": np.zeros((0, 2), np.float32)}
    path = state_dicts.write_state_dict(arrays, str(tmp_path / f"weights{suffix}"), dtype=dtype)
    back = state_dicts.read_state_dict(path)
    assert list(back) == list(arrays)
    for key, value in arrays.items():
        if dtype == "bfloat16":
            # Round to nearest even on the upper 16 bits: 1 + 2^-9 rounds to 1.
            want = np.float32([[1.0, 1.0, -3.25]]) if key == "w.a" else value.astype(np.float32)
            np.testing.assert_array_equal(back[key], want)
        else:
            assert back[key].dtype == value.dtype
            np.testing.assert_array_equal(back[key], value)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def _zip_with_pickle(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")


def test_refuses_any_other_global_without_running_it(tmp_path, capfd):
    evil = tmp_path / "evil.pth"
    _zip_with_pickle(evil, pickle.dumps({"w": _RunsCode()}, protocol=2))
    with pytest.raises(torch_format.UnsafeCheckpointError, match=r"evil.pth.*global (posix|os)\.system"):
        state_dicts.read_state_dict(str(evil))
    legacy = tmp_path / "evil_legacy.pth"
    buffer = io.BytesIO()
    for header in (torch_format.LEGACY_MAGIC, torch_format.LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(header, buffer, protocol=2)
    pickle.dump(_RunsCode(), buffer, protocol=2)
    legacy.write_bytes(buffer.getvalue())
    with pytest.raises(torch_format.UnsafeCheckpointError, match="evil_legacy.pth"):
        state_dicts.read_state_dict(str(legacy))
    assert "should-never-run" not in capfd.readouterr().out


def test_broken_files_name_the_file_and_the_problem(tmp_path):
    source = open(os.path.join(FIXTURES, "state_dict_zip.pth"), "rb").read()
    (tmp_path / "truncated.pth").write_bytes(source[: len(source) // 2])
    with pytest.raises(torch_format.CorruptCheckpointError, match="truncated.pth"):
        state_dicts.read_state_dict(str(tmp_path / "truncated.pth"))
    legacy = open(os.path.join(FIXTURES, "state_dict_legacy.pth"), "rb").read()
    (tmp_path / "legacy_cut.pth").write_bytes(legacy[:-100])
    with pytest.raises(torch_format.CorruptCheckpointError, match="legacy_cut.pth.*truncated"):
        state_dicts.read_state_dict(str(tmp_path / "legacy_cut.pth"))
    (tmp_path / "notes.bin").write_text("these are not weights\n")
    with pytest.raises(torch_format.CorruptCheckpointError, match="notes.bin is not a checkpoint"):
        state_dicts.read_state_dict(str(tmp_path / "notes.bin"))
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(torch_format.CorruptCheckpointError, match="empty.safetensors is empty"):
        state_dicts.read_state_dict(str(tmp_path / "empty.safetensors"))
    path = safetensors_format.save({"w": np.ones((4, 4), np.float32)}, str(tmp_path / "cut.safetensors"))
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-8])
    with pytest.raises(safetensors_format.CorruptSafetensorsError, match="cut.safetensors: tensor w"):
        state_dicts.read_state_dict(path)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        state_dicts.read_state_dict(str(tmp_path / "absent.pth"))
    torch_format.save({}, str(tmp_path / "no_tensors.pth"))
    with pytest.raises(state_dicts.NotAStateDictError, match="no_tensors.pth holds no state dict"):
        state_dicts.read_state_dict(str(tmp_path / "no_tensors.pth"))


def test_conversions_of_bad_inputs_name_the_problem_and_write_nothing(tmp_path):
    """A checkpoint of another architecture, a file that is not a checkpoint, a truncated one and
    an unsafe pickle, through the convert CLI: a clear error, and no output folder."""
    from titok_var.tools import convert

    out = tmp_path / "out"
    other = tmp_path / "var_d16.pth"  # a state dict of another model (the torch-written fixture)
    other.write_bytes(open(os.path.join(FIXTURES, "state_dict_zip.pth"), "rb").read())
    with pytest.raises(ValueError, match=r"var_d16.pth \(--arch var_d16\): state dict has no pos_1LC: not a VAR"):
        convert.main(["--arch", "var_d16", "--input", str(other), "--output", str(out)])
    text = tmp_path / "notes.bin"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match="notes.bin is not a checkpoint"):
        convert.main(["--arch", "titok_l32", "--input", str(text), "--output", str(out)])
    truncated = tmp_path / "vae_ch160v4096z32.pth"
    truncated.write_bytes(open(os.path.join(FIXTURES, "state_dict_zip.pth"), "rb").read()[:1500])
    with pytest.raises(ValueError, match="vae_ch160v4096z32.pth"):
        convert.main(["--arch", "var_vqvae", "--input", str(truncated), "--output", str(out)])
    evil = tmp_path / "generator_titok_l32.bin"
    _zip_with_pickle(evil, pickle.dumps({"w": _RunsCode()}, protocol=2))
    with pytest.raises(torch_format.UnsafeCheckpointError, match="generator_titok_l32.bin"):
        convert.main(["--arch", "maskgit_l32", "--input", str(evil), "--output", str(out)])
    assert not out.exists()


def test_import_of_a_file_that_is_not_converted_weights_names_it(tmp_path):
    from tests.helpers import tiny_titok_config
    from titok_var.tools import export

    text = tmp_path / "weights.npz"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match="weights.npz is not a converted-weights .npz"):
        export.import_converted(tiny_titok_config(), str(text), str(tmp_path / "export"))
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize("name", ["module_state_dict_zip.pth", "module_state_dict_legacy.pth"])
def test_reads_a_module_state_dict_with_its_metadata_attribute(name):
    """torch.save(model.state_dict()) pickles the OrderedDict's `_metadata` with BUILD: read it."""
    loaded = state_dicts.read_state_dict(os.path.join(FIXTURES, name))
    with np.load(os.path.join(FIXTURES, "module_expected.npz")) as expected:
        assert list(loaded) == list(expected.files)
        for key in expected.files:
            assert loaded[key].dtype == expected[key].dtype, key
            np.testing.assert_array_equal(loaded[key], expected[key])
    assert loaded["1.num_batches_tracked"].dtype == np.int64


def test_crafted_pickles_change_nothing_and_fail_clearly(tmp_path):
    import collections

    # BUILD aimed at the resolved OrderedDict class: only a throwaway subclass is touched.
    payload = (b"\x80\x02ccollections\nOrderedDict\n}X\x0b\x00\x00\x00__getitem__N" b"s" b"b.")
    _zip_with_pickle(tmp_path / "build.pth", payload)
    with pytest.raises(ValueError):
        state_dicts.read_state_dict(str(tmp_path / "build.pth"))
    assert collections.OrderedDict.__getitem__ is not None and collections.OrderedDict([("a", 1)])["a"] == 1
    # Object construction opcodes other than REDUCE are refused before unpickling.
    _zip_with_pickle(tmp_path / "newobj.pth", b"\x80\x02ccollections\nOrderedDict\n)\x81.")
    with pytest.raises(torch_format.UnsafeCheckpointError, match="NEWOBJ opcode"):
        state_dicts.read_state_dict(str(tmp_path / "newobj.pth"))
    # A stride-0 view announcing 2**70 elements of a 1-element storage.
    def text(value: str) -> bytes:  # BINUNICODE
        return b"X" + len(value).to_bytes(4, "little") + value.encode()

    storage_id = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text("0") + text("cpu") + b"K\x01tQ"
    size = b"(\x8a\x09" + (2 ** 70).to_bytes(9, "little") + b"t"  # (2**70,)
    stride = b"(K\x00t"  # (0,)
    bomb = (b"\x80\x02}" + text("w") + b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage_id + b"K\x00" + size
            + stride + b"\x89}tRs.")
    with zipfile.ZipFile(tmp_path / "bomb.pth", "w") as archive:
        archive.writestr("archive/data.pkl", bomb)
        archive.writestr("archive/data/0", np.float32([1.0]).tobytes())
    with pytest.raises(torch_format.CorruptCheckpointError, match="more elements than its storage"):
        state_dicts.read_state_dict(str(tmp_path / "bomb.pth"))
