"""``python -m signify.cli``: the same as the ``signify`` console script."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
