"""The ``bgm`` command line."""
