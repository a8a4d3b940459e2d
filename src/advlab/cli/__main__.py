"""``python -m advlab.cli``: the ``advlab`` command (as ``python -m advlab``)."""

import sys

from advlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
