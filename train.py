"""Train a ganpaint model: `accelerate launch train.py --config configs/NAME.yaml [key=value ...]`."""

import argparse
import os
import sys

from ganpaint import config as config_lib
from ganpaint.errors import UserError
from ganpaint.train.loop import train


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="configs/NAME.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value")
    args = parser.parse_args()
    try:
        train(config_lib.load(args.config, args.overrides))
    except UserError as error:
        print(f"train.py: error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


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
