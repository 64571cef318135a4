"""Train a ganpaint model: `accelerate launch train.py --config configs/NAME.yaml [key=value ...]`."""

import argparse
import os
import sys
import traceback

from ganpaint import config as config_lib
from ganpaint.errors import UserError
from ganpaint.train.loop import train

PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="configs/NAME.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value")
    args = parser.parse_args()
    rank = os.environ.get("RANK", "0")
    where = f"train.py (rank {rank})" if int(os.environ.get("WORLD_SIZE", 1)) > 1 else "train.py"
    # Every failure ends in one line and an exit status, on every rank: a rank that raised must
    # leave (its peers' collectives then fail too, and the launcher stops the rest).
    try:
        train(config_lib.load(args.config, args.overrides))
    except UserError as error:
        print(f"{where}: error: {error}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"{where}: interrupted (the newest complete checkpoint is kept)", file=sys.stderr)
        return 130
    except Exception as error:
        if _peer_failure(error):
            message = "another process ended, so this one stops (that process says why)"
        else:  # a bug: its traceback is what a report needs
            traceback.print_exc()
            message = f"{type(error).__name__}: {next(iter(str(error).splitlines()), '')}"
        print(f"{where}: error: {message}", file=sys.stderr, flush=True)
        return 1
    return 0


def _peer_failure(error: Exception) -> bool:
    """A collective that failed because another process ended (gloo's words for it)."""
    return any(words in str(error) for words in PEER_GONE)


if __name__ == "__main__":
    status = main()
    # gloo can abort at interpreter shutdown after all work is done (ENVIRONMENT.md): with several
    # processes, leave at once once the process group is torn down and the streams are flushed.
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        if status == 0:  # a failed rank must not wait in a barrier for the others
            from ganpaint.train.distributed import shutdown

            shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
