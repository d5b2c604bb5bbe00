"""Deprecated: the ``bgm`` command line moved to :mod:`bgm_cli` (it sits above the core and the adapters).

``python -m bgm_model.cli.main`` and ``from bgm_model.cli.common import ...`` still work for now and warn;
nothing here imports :mod:`bgm_cli` before it is used.
"""
