"""``python -m jaxprune``: the ``jaxprune`` command."""

import sys

from jaxprune import cli

if __name__ == "__main__":
    sys.exit(cli.main())
