"""``python -m techbench``: the same as the ``techbench`` command."""

import sys

from techbench.cli import main

sys.exit(main())
