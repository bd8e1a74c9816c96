"""How the last training run in a work dir ended, for launch scripts.

    python -m titok_var.tools.run_status WORKDIR    # prints complete | preempted | unknown

Exit status: 0 complete (train.num_steps reached), 3 preempted (stopped early by SIGTERM: run the
same command again to resume), 4 unknown (no train_status.json: the run has not ended cleanly,
e.g. it crashed or was killed). `main.py --mode train` itself exits 0 on every clean stop, so a
script tells "stopped early" from "complete" here. Works for gs:// work dirs too.
"""

import sys

from titok_var.training.run_status import read_status

EXIT_CODES = {"complete": 0, "preempted": 3, "unknown": 4}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    status = read_status(argv[0])
    print(status["status"] + (f" at step {status['step']} of {status['num_steps']}" if "step" in status else ""))
    return EXIT_CODES.get(status["status"], 4)


if __name__ == "__main__":
    sys.exit(main())
