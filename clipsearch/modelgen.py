"""`python -m clipsearch.modelgen DEST [PRESET]`: the command line of `clipsearch.models.modelgen`."""

import sys

from clipsearch.models.modelgen import main

if __name__ == "__main__":
    sys.exit(main())
