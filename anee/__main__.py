"""`python -m anee`: the command line (`anee.cli`)."""

import sys

from .cli import main

sys.exit(main())
