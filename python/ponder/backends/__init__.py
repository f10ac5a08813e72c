"""Policy engines other than ponder's native :class:`~ponder.Engine`.

:class:`OpenAICompatible` speaks the engine interface that ``ponder.search`` drives (sequence
handles: ``prefill``, ``tokens``, ``expand``, ``evict``, ``free``, ``has_kv``, ``kv_stats``) over
any OpenAI-compatible ``/v1/completions`` server: vLLM, SGLang, llama.cpp's ``llama-server``,
llama-cpp-python. KV reuse is then the server's prefix cache.
"""

from ponder.backends.http import BackendError, RetryPolicy
from ponder.backends.openai import OpenAICompatible, request_seed

__all__ = ["BackendError", "OpenAICompatible", "RetryPolicy", "request_seed"]
