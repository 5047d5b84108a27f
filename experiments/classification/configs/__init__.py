"""Configs of the classification experiment: ``get_config()`` per file, ``base`` holds the keys."""
