"""Pre-training configs: ``tiny`` (the default, CPU), ``c4_100m`` and ``c4_1b`` (accelerators)."""
