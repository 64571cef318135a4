"""Train a ganpaint model: `accelerate launch train.py --config NAME_OR_YAML [key=value ...]`.

The same as `ganpaint train` (`--resume RUN_DIR` continues a run; `ganpaint train --help`), for
launchers that start a script.
"""

import sys

from ganpaint.cli import run

if __name__ == "__main__":
    run(["train", *sys.argv[1:]], program="train.py")
