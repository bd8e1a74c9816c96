"""<workdir>/train_status.json: how the last training run ended: "complete", "preempted" (run
again to resume) or "failed" (an error a restart would meet again).

Every clean stop of `main.py --mode train` exits 0; this file is how a launch script tells
"stopped early, run again" from "done" (`python -m titok_var.tools.run_status WORKDIR`).
Written by process 0 after the final checkpoint has committed.
"""

import json

from etils import epath

STATUS_FILE = "train_status.json"


def write_status(workdir: str, status: str, step: int | None = None, num_steps: int | None = None,
                 error: str | None = None) -> None:
    record = {"status": status}
    if step is not None:
        record.update(step=step, num_steps=num_steps)
    if error:
        record["error"] = error[:2000]
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    path = epath.Path(workdir) / STATUS_FILE
    tmp = epath.Path(workdir) / (STATUS_FILE + ".tmp")
    tmp.write_text(json.dumps(record))
    tmp.replace(path)


def clear_status(workdir: str) -> None:
    path = epath.Path(workdir) / STATUS_FILE
    if path.exists():
        path.unlink()


def read_status(workdir: str) -> dict:
    """{"status": "complete" | "preempted", "step", "num_steps"}, or {"status": "unknown"} when the
    last run has not ended cleanly (no file, or an unreadable one)."""
    path = epath.Path(workdir) / STATUS_FILE
    if not path.exists():
        return {"status": "unknown"}
    try:
        record = json.loads(path.read_text())
    except ValueError:
        return {"status": "unknown"}
    return record if isinstance(record, dict) and "status" in record else {"status": "unknown"}
