"""``python -m advlab.cli``: the ``advlab`` command (as ``python -m advlab``)."""

import sys

from advlab.cli import main

sys.exit(main())
