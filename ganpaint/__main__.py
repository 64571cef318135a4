"""`python -m ganpaint`: the same console script as `ganpaint`."""

import sys

from ganpaint.cli import main

sys.exit(main())
