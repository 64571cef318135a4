"""Train a ganpaint model: `accelerate launch train.py --config NAME_OR_YAML [key=value ...]`.

`--resume RUN_DIR` continues a run with its saved config; `ganpaint train --help` says more.
"""

import argparse
import os
import sys
import traceback

from ganpaint.cli import add_train_arguments
from ganpaint.errors import UserError, describe_os_error, print_error
from ganpaint.train.distributed import shutdown
from ganpaint.train.loop import train_command

MULTI_PROCESS = int(os.environ.get("WORLD_SIZE", 1)) > 1
WHERE = f"train.py (rank {os.environ.get('RANK', 0)})" if MULTI_PROCESS else "train.py"
# How gloo reports a collective whose peer process has ended.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_train_arguments(parser)
    args = parser.parse_args()
    # Every failure ends in one line and an exit status, on every rank: a rank that raised must
    # leave (its peers' collectives then fail too, and the launcher stops the rest).
    try:
        status = train_command(**vars(args))
        shutdown()  # every rank done (only then: a failed rank must not wait in a barrier)
    except UserError as error:
        return _fail(2, str(error))
    except OSError as error:
        return _fail(2, describe_os_error(error))
    except KeyboardInterrupt:
        print(f"{WHERE}: interrupted (the newest complete checkpoint is kept)", file=sys.stderr)
        return 130
    except Exception as error:
        if any(words in str(error) for words in PEER_GONE):
            return _fail(1, "another process ended, so this one stops (that process says why)")
        traceback.print_exc()  # a bug: its traceback is what a report needs
        return _fail(1, f"{type(error).__name__}: {next(iter(str(error).splitlines()), '')}")
    return status


def _fail(status: int, message: str) -> int:
    print_error(WHERE, message)
    return status


if __name__ == "__main__":
    status = main()
    # gloo can abort at interpreter shutdown after all work is done (ENVIRONMENT.md): with several
    # processes, leave at once once the process group is torn down and the streams are flushed.
    # After a failure, leave at once too: a loader worker (which ignores the stop signals) caught
    # mid-start could otherwise hold the interpreter's exit for ever.
    if MULTI_PROCESS or status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
