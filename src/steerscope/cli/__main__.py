"""``python -m steerscope.cli ...``: the ``steerscope`` command without its console script."""

import sys

from steerscope.cli import main

if __name__ == "__main__":
    sys.exit(main())
