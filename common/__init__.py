"""Shared by Spark jobs, Ray code and tests: config, schema, lake layout, Spark session, logging."""
