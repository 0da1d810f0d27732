"""The reference KV-cache module: Tensor, KVCache, enable/disable, and a small NumPy GPT."""

from reference.gpt import GPT, generate_greedy
from reference.kv_cache import KVCache
from reference.memoization import disable_kv_cache, enable_kv_cache
from reference.tensor import Tensor

__all__ = ["GPT", "KVCache", "Tensor", "disable_kv_cache", "enable_kv_cache", "generate_greedy"]
