"""The lot partitions: one dynamic partition per product lot found in the landing store.

Keys are lot ids validated by :func:`peelscan.ids.validate_id` before they are added, so a
key never holds ``/``, ``..``, ``,`` or ``|`` (which break Dagster's partition ranges).
"""

from dagster import DynamicPartitionsDefinition

LOTS_PARTITIONS_NAME = "lots"

lots_partitions = DynamicPartitionsDefinition(name=LOTS_PARTITIONS_NAME)
