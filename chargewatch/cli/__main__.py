"""``python -m chargewatch.cli``."""

import sys

from chargewatch.cli import main

sys.exit(main())
