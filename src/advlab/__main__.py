"""``python -m advlab``: the same as the ``advlab`` command."""

import sys

from advlab.cli import main

sys.exit(main())
