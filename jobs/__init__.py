"""PySpark jobs: one module per stage, each runnable with spark-submit or the reclake CLI."""
