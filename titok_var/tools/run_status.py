"""How the last training run in a work dir ended, for launch scripts.

    python -m titok_var.tools.run_status WORKDIR          # prints complete | preempted | failed | unknown
    python -m titok_var.tools.run_status --clear WORKDIR  # before a new attempt

Exit status: 0 complete (train.num_steps reached), 3 preempted (stopped early by SIGTERM: run the
same command again to resume), 4 unknown (no train_status.json: the run has not ended, or was
killed), 5 failed (an error that a restart would meet again, e.g. a non-finite loss or a config
error: not worth retrying). `main.py --mode train` itself exits 0 on every clean stop, so a
script tells "stopped early" from "complete" here. Works for gs:// work dirs too.
"""

import sys

from titok_var.training.run_status import clear_status, read_status

EXIT_CODES = {"complete": 0, "preempted": 3, "unknown": 4, "failed": 5}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    clear = argv[:1] == ["--clear"]
    argv = argv[1:] if clear else argv
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    if clear:
        clear_status(argv[0])
        return 0
    status = read_status(argv[0])
    name = status.get("status", "unknown")
    where = f" at step {status['step']} of {status['num_steps']}" if "step" in status and "num_steps" in status else ""
    print(name + where + (f": {status['error']}" if status.get("error") else ""))
    return EXIT_CODES.get(name, 4)


if __name__ == "__main__":
    sys.exit(main())
