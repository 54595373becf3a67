"""`python -m captioner`: the same as the `captioner` command."""

import sys

from captioner.cli import main

sys.exit(main())
