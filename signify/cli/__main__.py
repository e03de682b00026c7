"""``python -m signify.cli``: the same as the ``signify`` console script."""

import sys

from . import main

sys.exit(main())
