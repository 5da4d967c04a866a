"""``python -m actpack``: the ``actpack`` command line."""

import sys

from actpack.cli import main

sys.exit(main())
