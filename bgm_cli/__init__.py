"""The ``bgm`` command line and the demo application.

The top of the tree: it imports the core (:mod:`bgm_model`), its libraries and the framework adapters
(:mod:`bgm_integrations`), and nothing imports it. Each sub-command lives in its own module with a
``register(subparsers)``; :mod:`bgm_cli.args` turns config dataclasses into flags for all of them.
"""
