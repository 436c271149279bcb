"""``python -m cascade.cli``: the same app as the ``cascade`` script."""

import sys

from cascade.cli.main import app

sys.exit(app())
