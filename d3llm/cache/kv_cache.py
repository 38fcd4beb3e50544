"""A static, batched key/value cache for bidirectional dLLM decoding (SPEC section 3).

Layout: per layer one key and one value buffer ``[B, H_kv, capacity, head_dim]``. Keys are stored **after RoPE** at
their absolute canvas positions, so a cached prefix stays valid when the cache is truncated or appended to.

``lengths[b]`` is the number of valid cached positions of row ``b`` (a prefix ``[0, lengths[b])``). Buffer content
beyond a row's length is scratch: a forward writes the new keys of its whole slice into the buffer (so attention
reads one contiguous span) and only then decides, through ``append``, how much of that slice becomes part of the
cached prefix. This single mechanism gives every operation the decoders need:

===================================  =================================================================================
operation (SPEC name)                 model call
===================================  =================================================================================
``full(x, keep_kv)``                  ``model(x, use_cache=True)`` -> ``out.cache`` holds all positions
``truncate(kv, n)``                   ``cache.truncate(n)``
``cached(x[c:], kv, append=n)``       ``model(x[:, c:], cache=cache, start=c, append=n)``; n = 0 is read-only
``replace(x[s:e], kv, span)``         ``model(x[:, s:e], cache=cache, start=s)`` with ``e <= length`` (dual cache)
===================================  =================================================================================

Attention of a forward over ``[start, start + T)`` reads keys ``[0, max(start + T, length))``: the cached prefix,
the fresh keys of the slice, and (dual cache) stale cached keys after the slice.

Rows of a batch may hold different lengths (each row of a batched decoder keeps its own cache state). The decoding
engine keeps one cache whose rows are handed to requests as they join and reused when they leave, and writes them
through packed forwards (:mod:`d3llm.models.packed`): each request's slice goes to its own row and positions. A forward may
then restrict, per row, the slots it writes with ``write_range=(lo, hi)`` (``[B]`` tensors): slots outside
``[lo, hi)`` keep their cached keys (the queries there are computed but belong to the caller to ignore), so one
batched forward over the union of the rows' ranges serves rows that alone would have forwarded different slices.
"""

from __future__ import annotations

import numpy as np
import torch

from d3llm.errors import ConfigError


class KVCache:
    """Per-layer post-RoPE key/value buffers with a per-row valid length.

    Attributes:
        keys, values: lists (one per layer) of tensors ``[B, H_kv, capacity, D]``.
        lengths: ``int64[B]`` numpy array: valid cached prefix length of each row. Kept on the host so the
            decoding loop reads and updates it without touching the device.
    """

    def __init__(
        self,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if min(num_layers, batch_size, num_kv_heads, head_dim) <= 0 or capacity < 0:
            raise ConfigError(
                f"KVCache needs positive sizes, got layers={num_layers} batch={batch_size} "
                f"kv_heads={num_kv_heads} head_dim={head_dim} capacity={capacity}"
            )
        shape = (batch_size, num_kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = np.zeros(batch_size, dtype=np.int64)

    # -- sizes ----------------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def length(self) -> int:
        """The common cached length of all rows; an error if rows differ (use ``lengths`` then)."""
        first = int(self.lengths[0])
        if (self.lengths != first).any():
            raise ValueError(f"cache rows hold different lengths {self.lengths.tolist()}; read .lengths instead")
        return first

    @property
    def max_length(self) -> int:
        return int(self.lengths.max()) if self.lengths.size else 0

    def __repr__(self) -> str:
        k = self.keys[0]
        return (
            f"KVCache(layers={self.num_layers}, batch={self.batch_size}, kv_heads={k.shape[1]}, "
            f"capacity={self.capacity}, head_dim={k.shape[3]}, lengths={self.lengths.tolist()}, dtype={k.dtype})"
        )

    # -- operations used by the decoders ---------------------------------------------------------------------------
    @staticmethod
    def _as_lengths(n) -> np.ndarray:
        if isinstance(n, torch.Tensor):
            n = n.detach().cpu().numpy()
        return np.asarray(n, dtype=np.int64)

    def truncate(self, n: int | np.ndarray | torch.Tensor) -> "KVCache":
        """Keep at most the first ``n`` positions of every row (``n`` an int or ``[B]`` values). In place."""
        n_a = self._as_lengths(n)
        if (n_a < 0).any():
            raise ValueError(f"cannot truncate a cache to a negative length {n_a.tolist()}")
        self.lengths = np.minimum(self.lengths, n_a)
        return self

    def set_lengths(self, lengths: int | np.ndarray | torch.Tensor) -> "KVCache":
        """Declare the valid prefix of each row (growing means: the buffer content up to there is now cached)."""
        n_a = np.broadcast_to(self._as_lengths(lengths), self.lengths.shape).copy()
        if (n_a < 0).any() or (n_a > self.capacity).any():
            raise ValueError(f"cache lengths {n_a.tolist()} outside [0, {self.capacity}]")
        self.lengths = n_a
        return self

    def select_rows(self, rows: torch.Tensor | list[int]) -> "KVCache":
        """A cache holding only the given rows (in that order); used to drop finished rows from a batch."""
        rows_t = torch.as_tensor(rows, dtype=torch.long)
        out = KVCache.__new__(KVCache)
        device_rows = rows_t.to(self.keys[0].device)
        out.keys = [k.index_select(0, device_rows) for k in self.keys]
        out.values = [v.index_select(0, device_rows) for v in self.values]
        out.lengths = self.lengths[rows_t.cpu().numpy()]
        return out

    def clone(self) -> "KVCache":
        return self.select_rows(torch.arange(self.batch_size))

    def ensure_rows(self, rows: int) -> None:
        """Grow the buffers so that cache rows ``[0, rows)`` exist (new rows are empty). The decoding engine gives
        every active request one row and reuses the rows of requests that left."""
        grow = rows - self.batch_size
        if grow <= 0:
            return
        for i in range(self.num_layers):
            k, v = self.keys[i], self.values[i]
            pad = (grow, *k.shape[1:])
            self.keys[i] = torch.cat([k, k.new_zeros(pad)], dim=0)
            self.values[i] = torch.cat([v, v.new_zeros(pad)], dim=0)
        self.lengths = np.concatenate([self.lengths, np.zeros(grow, dtype=np.int64)])

    # -- used by the model forward -----------------------------------------------------------------------------------
    def ensure_capacity(self, needed: int) -> None:
        """Grow the buffers (zero-filled) so that positions ``[0, needed)`` exist."""
        if needed <= self.capacity:
            return
        grow = needed - self.capacity
        for i in range(self.num_layers):
            k, v = self.keys[i], self.values[i]
            pad = (k.shape[0], k.shape[1], grow, k.shape[3])
            self.keys[i] = torch.cat([k, k.new_zeros(pad)], dim=2)
            self.values[i] = torch.cat([v, v.new_zeros(pad)], dim=2)

    def write(
        self,
        layer: int,
        key: torch.Tensor,
        value: torch.Tensor,
        start: int,
        kv_end: int,
        write_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the slice's new ``key``/``value`` ``[B, H_kv, T, D]`` at ``[start, start+T)`` and return the key and
        value views ``[B, H_kv, kv_end, D]`` that attention reads.

        ``write_mask`` (``[B, T]`` bool, optional): where False the cached entry is kept instead of the new one.
        """
        end = start + key.shape[2]
        kbuf, vbuf = self.keys[layer], self.values[layer]
        if write_mask is None:
            kbuf[:, :, start:end] = key
            vbuf[:, :, start:end] = value
        else:
            m = write_mask[:, None, :, None]
            kbuf[:, :, start:end] = torch.where(m, key, kbuf[:, :, start:end])
            vbuf[:, :, start:end] = torch.where(m, value, vbuf[:, :, start:end])
        return kbuf[:, :, :kv_end], vbuf[:, :, :kv_end]
