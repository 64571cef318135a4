"""Train a ganpaint model: `accelerate launch train.py --config NAME_OR_YAML [key=value ...]`.

`--resume RUN_DIR` continues a run with its saved config; `ganpaint train --help` says more.
"""

import argparse
import os
import sys

from ganpaint.cli import add_train_arguments
from ganpaint.errors import UserError
from ganpaint.train.loop import train_command


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    add_train_arguments(parser)
    try:
        return train_command(**vars(parser.parse_args()))
    except UserError as error:
        print(f"train.py: error: {error}", file=sys.stderr, flush=True)
        return 2


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
