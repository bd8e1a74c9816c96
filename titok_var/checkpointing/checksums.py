"""Per-file SHA-256 of a finished checkpoint step or export, written after the save has committed
and verified before a restore, so flipped bytes, a truncated or emptied file or a deleted one are
an error naming the file instead of NaNs two steps later.

`checksums.json` sits in the folder it covers: {relative path: {"size": bytes, "sha256": hex}}.
A folder without it (written before checksums existed, or a checkpoint whose run was killed
between its commit and the checksum) is accepted unverified, with a warning.
"""

import hashlib
import json

from absl import logging
from etils import epath

CHECKSUM_FILE = "checksums.json"
_CHUNK = 1 << 22


class DamagedCheckpointError(ValueError):
    """A file of a checkpoint or export differs from what was written."""


def _files(directory: epath.Path) -> list[epath.Path]:
    """Every file below `directory` (iterdir, level by level: object stores refuse `**` globs)."""
    out, pending = [], [directory]
    while pending:
        for path in sorted(pending.pop().iterdir()):
            if path.is_dir():
                pending.append(path)
            elif path.name != CHECKSUM_FILE and not path.name.endswith(".tmp"):
                out.append(path)
    return sorted(out)


def _digest(path: epath.Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def write(directory) -> dict:
    """Writes <directory>/checksums.json for every file below it (atomically); returns the table."""
    directory = epath.Path(directory)
    table = {}
    for path in _files(directory):
        size, sha = _digest(path)
        table[str(path.relative_to(directory))] = {"size": size, "sha256": sha}
    tmp = directory / (CHECKSUM_FILE + ".tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
    tmp.replace(directory / CHECKSUM_FILE)
    return table


def has_checksums(directory) -> bool:
    return (epath.Path(directory) / CHECKSUM_FILE).exists()


def verify(directory, what: str) -> bool:
    """Checks every file of `directory` against its checksums.json; `what` names it in errors
    (e.g. "checkpoint step 400 in /runs/x/checkpoints"). Returns False (after a warning) when there
    are no checksums to check."""
    directory = epath.Path(directory)
    table_path = directory / CHECKSUM_FILE
    if not table_path.exists():
        logging.warning("%s has no %s: it cannot be verified", what, CHECKSUM_FILE)
        return False
    try:
        table = json.loads(table_path.read_text())
        if not all(isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
                   for v in table.values()):
            raise ValueError("malformed entries")
    except (ValueError, OSError, AttributeError) as e:
        raise DamagedCheckpointError(f"{what}: {table_path} is damaged ({e})") from e
    present = {str(p.relative_to(directory)) for p in _files(directory)}
    for name, expected in sorted(table.items()):
        path = directory / name
        if name not in present:
            raise DamagedCheckpointError(f"{what}: file {path} is missing")
        size, sha = _digest(path)
        if size != expected["size"]:
            raise DamagedCheckpointError(
                f"{what}: file {path} has {size} bytes, {expected['size']} were written (truncated or damaged)")
        if sha != expected["sha256"]:
            raise DamagedCheckpointError(f"{what}: file {path} does not match its checksum (damaged)")
    extra = sorted(present - set(table))
    if extra:
        logging.warning("%s holds files written after its checksums: %s", what, extra[:5])
    return True
