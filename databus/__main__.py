"""``python -m databus``: the ``databus`` command."""

import sys

from ._cli import main

sys.exit(main())
