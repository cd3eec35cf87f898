"""peelscan: unsupervised defect detection in X-ray scans of food.

The domain library. Pure functions on numpy arrays and torch tensors; it never imports
dagster (``tests/test_layout.py`` keeps it so). The Dagster assets in ``assets/`` only wire
these functions to the orchestrator.

Method after: "Virtual peeling" of potato X-ray scans, tiled convolutional autoencoder trained
on good samples only, tiles compared with thirteen image-similarity measures (FSIM best).
"""

__version__ = "0.1.0"
