"""``python -m jobs.generate`` / ``spark-submit jobs/generate/__main__.py``: the generate stage."""

import sys

from jobs.cli import run_stage

sys.exit(run_stage("generate"))
