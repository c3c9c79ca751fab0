"""`python -m clipper` is the same as the `clipper` console script."""

import sys

from clipper.cli import main

sys.exit(main())
