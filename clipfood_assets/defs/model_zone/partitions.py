"""Experiment runs are dynamic partitions: each key is one LoRA run with its own folder."""

import dagster as dg

experiment_runs = dg.DynamicPartitionsDefinition(name="experiment_runs")
