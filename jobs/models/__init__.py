"""Spark implementations of the model interface (``common.models``): ALS and popularity.

Library code for the ``fit`` stage and the jobs that retrain (ablation, tuning), not a stage of
its own. The registry in ``common/models.py`` names these classes.
"""
