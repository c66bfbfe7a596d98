"""`python -m clipsearch.export_onnx SOURCE OUT_DIR ...`: the command line of `clipsearch.models.export`."""

import sys

from clipsearch.models.export import main

if __name__ == "__main__":
    sys.exit(main())
