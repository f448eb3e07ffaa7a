"""Dagster only: assets, checks, resources, I/O manager, partitions, sensors, jobs."""
