"""`python -m gpt_scratch <command>`: see gpt_scratch/cli.py."""

import sys

from gpt_scratch.cli import main

sys.exit(main())
