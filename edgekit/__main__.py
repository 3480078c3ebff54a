"""``python -m edgekit`` (and ``accelerate launch -m edgekit ...``): the ``edgekit`` command."""

import sys

from edgekit.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
