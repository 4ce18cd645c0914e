"""`python -m gpt_scratch <stage>`: see gpt_scratch/cli.py."""

import sys

if sys.argv[1:2] == ["grade"]:
    # The grader straight away: the command line imports torch (~2 s), and grading a class needs it
    # only in the pytest process it starts for each student.
    from gpt_scratch.grade import main as grade

    sys.exit(grade(sys.argv[2:], prog="python -m gpt_scratch grade"))

from gpt_scratch.cli import main

sys.exit(main())
