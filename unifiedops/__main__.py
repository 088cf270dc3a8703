"""``python -m unifiedops``: the ``unifiedops`` command."""

import sys

from unifiedops.cli import main

if __name__ == "__main__":
    sys.exit(main())
