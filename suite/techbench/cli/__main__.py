"""``python -m techbench.cli`` (the path from before the package had folders): the command."""

import sys

from techbench.cli import main

sys.exit(main())
