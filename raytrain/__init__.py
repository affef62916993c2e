"""Ray Train / Tune deep recommenders reading the lake (lands in a later issue)."""
