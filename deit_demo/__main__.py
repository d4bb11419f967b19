"""`python -m deit_demo ...`: the CLI (`deit_demo.cli`)."""

import sys

from deit_demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
