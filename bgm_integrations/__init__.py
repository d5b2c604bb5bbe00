"""Framework adapters for bgm-bridge: ``bgm_integrations.langchain`` and ``bgm_integrations.llama_index``.

Each adapter only translates types between its framework and the shared core in :mod:`bgm_model`.
"""
