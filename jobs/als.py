"""Alias of ``reclake fit`` (``--model als`` unless told otherwise): fit a model, write its recommendations.

    spark-submit jobs/als.py --lake ./lake --protocol stratified --rank 64 --max-iter 10
    reclake als --model popularity --protocol temporal --run-id pop-temporal

Everything (flags, tables, the run record) is as ``jobs/fit.py`` documents.
"""

from __future__ import annotations

from jobs.fit import add_arguments, main, preflight  # noqa: F401

if __name__ == "__main__":
    import sys

    from jobs.cli import run_stage

    sys.exit(run_stage("als"))
