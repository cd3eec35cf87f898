"""The Dagster code location of peelscan: definitions, partitions, jobs, schedules, sensors."""
