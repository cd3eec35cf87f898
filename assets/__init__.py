"""Dagster assets of peelscan, one module per stage. Thin: they call the ``peelscan`` library,
read and write the lake through the resources, and attach counts, tables and pictures."""
