"""``python -m advlab``: the same as the ``advlab`` command."""

import sys

from advlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
