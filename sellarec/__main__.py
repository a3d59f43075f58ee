"""``python -m sellarec``: see :mod:`sellarec.cli`."""

import sys

from sellarec.cli import main

sys.exit(main())
