"""Key/value caches for cached diffusion decoding."""

from d3llm.cache.kv_cache import KVCache

__all__ = ["KVCache"]
