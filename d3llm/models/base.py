"""The model interface every family implements: one forward that serves full-canvas and cached slice forwards.

``model(input_ids, attention_mask=None, position_ids=None, *, cache=None, use_cache=False, start=None,
append=None, write_range=None, causal=False) -> ModelOutput``

* ``input_ids`` ``[B, T]``: the forwarded tokens, canvas positions ``[start, start + T)``.
* ``logits`` ``[B, T, V]``: position i scores the token at position i, for every family (the next-token shift of
  Dream and Llama is done inside :class:`~d3llm.models.llama_style.LlamaStyleLM`).
* ``attention_mask`` ``[B, S]`` (1 = real token, 0 = padding), HF convention: it covers the keys, i.e. the cached
  prefix and the slice (with a cache: at least ``[0, kv_end)``; the canvas-long mask is the simplest thing to pass).
  Padded keys are never attended to; rotary positions default to ``cumsum(mask) - 1``, so a left-padded row sees
  exactly the positions it would see alone.
* ``cache``/``use_cache``/``start``/``append``/``write_range``: see :mod:`d3llm.cache.kv_cache`.
* ``causal=True`` forces a causal mask (used to check the weights against autoregressive reference models). A
  causal family (``model.causal``: Llama) always applies it.

``model.forward_packed(tokens, rows, score_index, cache=None)`` is the decoding engine's forward: several rows'
slices packed into one token axis, each against its own cache row, logits only at ``score_index`` (see
:mod:`d3llm.models.packed`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from d3llm.cache.kv_cache import KVCache
from d3llm.errors import ConfigError
from d3llm.models.configs import ModelConfig
from d3llm.models.layers import AttentionPlan, rotary_cos_sin
from d3llm.models.packed import MIN_ROWS, PackedPlan, PackedRows, shape_groups


@dataclass
class ModelOutput:
    """``logits`` ``[B, T, V]`` (position i scores token i) and the cache the forward used or created."""

    logits: torch.Tensor
    cache: KVCache | None = None


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Build ``nn.Linear``/``nn.Embedding`` modules without initialising their weights (for weights about to be
    loaded or set by :meth:`DiffusionLM.init_weights`). On the meta device this also avoids torch's lazy import of
    its compiler stack, which costs about a second on first use."""
    saved = nn.Linear.reset_parameters, nn.Embedding.reset_parameters
    nn.Linear.reset_parameters = nn.Embedding.reset_parameters = lambda self: None
    try:
        yield
    finally:
        nn.Linear.reset_parameters, nn.Embedding.reset_parameters = saved


_INIT_CHUNK = 1 << 22  # float32 elements drawn at a time (16 MiB): a multiple of 16, see fill_normal_


@torch.no_grad()
def fill_normal_(tensor: torch.Tensor, generator: torch.Generator, std: float) -> torch.Tensor:
    """Fill ``tensor`` in place with N(0, std) values drawn in float32 on the CPU from ``generator``.

    The values equal ``(torch.randn(tensor.shape, generator=generator) * std).to(tensor.dtype)``, without that
    full-size float32 temporary: they are drawn in chunks of :data:`_INIT_CHUNK` elements (CPU ``randn`` fills
    blocks of 16 values, so chunks that are multiples of 16, with a tail of at least 16, draw the same stream).
    A contiguous float32 CPU tensor is filled directly."""
    if tensor.dtype == torch.float32 and tensor.device.type == "cpu" and tensor.is_contiguous():
        torch.randn(tensor.shape, generator=generator, out=tensor.detach())
        return tensor.mul_(std)
    flat = tensor.view(-1)
    n = flat.numel()
    start = 0
    while start < n:
        stop = min(n, start + _INIT_CHUNK)
        if n - stop < 16:  # never leave a tail shorter than one block of 16
            stop = n
        flat[start:stop].copy_(torch.randn(stop - start, generator=generator).mul_(std))
        start = stop
    return tensor


class DiffusionLM(nn.Module):
    """Base class of every native model (LLaDA, Dream, and the causal Llama baseline): forward planning, cache
    bookkeeping and initialisation.

    Subclasses build their modules with the public checkpoint key names and implement :meth:`backbone` (embedding,
    blocks, final norm: ``[B, T]`` ids -> ``[B, T, hidden]``) and :meth:`head` (hidden -> aligned logits ``[B, T, V]``).
    ``causal`` is True for autoregressive families: every forward then uses a causal mask, and decoding methods
    check it (diffusion methods need a bidirectional model, ``autoregressive`` a causal one).
    """

    family: str = ""
    causal: bool = False
    rope_full_precision: bool = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.generation_config = None  # decoding defaults of the folder (d3llm.models.generation_config)
        self._rope_tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- to implement ----------------------------------------------------------------------------------------------
    def backbone(self, input_ids: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def head(self, hidden: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def head_at(self, hidden: torch.Tensor, index: torch.Tensor, plan: PackedPlan) -> torch.Tensor:
        """Aligned logits ``[M, V]`` of the packed tokens ``index`` (``hidden``: ``[T', hidden]``)."""
        raise NotImplementedError  # pragma: no cover

    # -- properties ----------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def mask_token_id(self) -> int | None:
        return self.config.mask_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self.config.eos_token_id

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def new_cache(self, batch_size: int, capacity: int) -> KVCache:
        """An empty cache sized for this model (dtype and device of its weights)."""
        c = self.config
        return KVCache(c.num_layers, batch_size, c.num_kv_heads, c.head_dim, capacity, dtype=self.dtype,
                       device=self.device)

    # -- initialisation --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, std: float = 0.02, seed: int | None = None) -> "DiffusionLM":
        """Random initialisation in place, in the parameters' own dtype and device: N(0, std) for embeddings and
        projections, residual output projections scaled by 1/sqrt(2 * layers) (GPT-2), zero biases, unit norms.

        Values are drawn on the CPU in float32 from one generator, parameter by parameter in registration order
        (:meth:`init_parameter_`), so they do not depend on the dtype or device the model was built in, and a
        writer that initialises tensor by tensor in the same order (``d3llm init``) produces the same weights."""
        gen = torch.Generator(device="cpu")
        gen.manual_seed(0 if seed is None else seed)
        for name, param in self.named_parameters():
            self.init_parameter_(name, param, gen, std=std, seed=seed)
        return self

    def init_parameter_(self, name: str, tensor: torch.Tensor, generator: torch.Generator, *, std: float,
                        seed: int | None) -> None:
        """Initialise one tensor (the parameter ``name``, or a stand-in of its shape) in place."""
        if name.endswith("bias"):
            tensor.zero_()
        elif tensor.ndim == 1:
            tensor.fill_(1.0)
        else:
            leaf = name.rsplit(".", 2)[-2]
            residual = leaf in self.residual_projections
            fill_normal_(tensor, generator, std / (2 * self.config.num_layers) ** 0.5 if residual else std)

    residual_projections: tuple[str, ...] = ()

    # -- forward -------------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        use_cache: bool = False,
        start: int | None = None,
        append: int | None = None,
        write_range: tuple[torch.Tensor, torch.Tensor] | None = None,
        causal: bool = False,
    ) -> ModelOutput:
        """See the module docstring. Returns aligned logits ``[B, T, V]`` and the cache (None without one)."""
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        bsz, seq = input_ids.shape
        if cache is None and use_cache:
            cache = self.new_cache(bsz, (start or 0) + seq)
        plan = self._plan(input_ids, attention_mask, position_ids, cache, start, write_range, causal or self.causal)
        hidden = self.backbone(input_ids, plan)
        logits = self.head(hidden, plan)
        if cache is not None:
            n = seq if append is None else append
            if not 0 <= n <= seq:
                raise ValueError(f"append={append} must lie in [0, {seq}] (the forwarded length)")
            cache.lengths = np.maximum(cache.lengths, plan.start + n)
        return ModelOutput(logits=logits, cache=cache)

    def forward_packed(self, tokens: torch.Tensor, rows: PackedRows, score_index: torch.Tensor, *,
                       cache: KVCache | None = None, causal: bool | None = None) -> torch.Tensor:
        """A packed forward (:mod:`d3llm.models.packed`): the rows' slices in one token axis, each attending to its
        own keys, logits only where they are needed.

        Args:
            tokens: ``[T]`` the packed token ids (row i's slice at ``rows.offsets[i]``).
            rows: where each row's slice lies (positions, cache rows, keys attended).
            score_index: ``[M]`` packed tokens whose aligned logits to return.
            cache: with a cache, each row writes its slice's keys and values at its positions of cache row
                ``rows.slots[i]`` (which must hold positions ``[0, start)`` already) and attends to
                ``[0, rows.kv_lens[i])`` of it; the cached lengths are the caller's to update.
            causal: mask keys after each query (default: the family's ``causal``).
        Returns:
            ``[M, V]`` logits (position i scores token i, both families).
        """
        device = tokens.device
        real = int(tokens.shape[0])
        pad = max(MIN_ROWS - real, 0)
        positions = rows.positions
        if pad:  # small matmuls round differently (MIN_ROWS): pad with position-0 tokens that attend to nothing
            tokens = torch.cat([tokens, tokens.new_zeros(pad)])
            positions = np.concatenate([positions, np.zeros(pad, dtype=positions.dtype)])
        opens = positions == 0
        opens[rows.offsets] = True
        positions_t = torch.from_numpy(positions).to(device)
        cos, sin = self._rotary_lookup(positions_t[None, :], int(positions.max()) + 1, device)
        write_slots = write_positions = None
        if cache is not None:
            short = cache.lengths[rows.slots] < rows.starts
            if short.any():
                i = int(np.flatnonzero(short)[0])
                raise ValueError(f"row {i} forwards from position {rows.starts[i]} but its cache row holds only "
                                 f"{cache.lengths[rows.slots[i]]} positions; a gap would be attended as garbage")
            cache.ensure_capacity(int((rows.starts + rows.lengths).max()))
            if len(rows.starts) > 1:
                write_slots = torch.from_numpy(np.repeat(rows.slots, rows.lengths)).to(device)
                write_positions = positions_t[:real]
        plan = PackedPlan(cos=cos, sin=sin, real=real, cache=cache, write_slots=write_slots,
                          write_positions=write_positions, opens=torch.from_numpy(opens).to(device),
                          causal=self.causal if causal is None else causal,
                          groups=shape_groups(rows, cache is not None))
        hidden = self.backbone(tokens[None, :], plan)[0]
        m = int(score_index.shape[0])
        if m < MIN_ROWS:
            score_index = torch.cat([score_index, score_index.new_zeros(MIN_ROWS - m)])
        return self.head_at(hidden, score_index, plan)[:m]

    def _plan(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        cache: KVCache | None,
        start: int | None,
        write_range: tuple[torch.Tensor, torch.Tensor] | None,
        causal: bool,
    ) -> AttentionPlan:
        bsz, seq = input_ids.shape
        device = input_ids.device
        if cache is None:
            if write_range is not None:
                raise ValueError("write_range needs a cache")
            start = 0 if start is None else int(start)
            key_start, kv_end = start, start + seq
        else:
            if cache.batch_size != bsz:
                raise ValueError(f"cache holds {cache.batch_size} rows but input_ids has {bsz}")
            start = cache.length if start is None else int(start)
            cache.ensure_capacity(start + seq)
            key_start, kv_end = 0, max(start + seq, cache.max_length)
        query_pos = torch.arange(start, start + seq, device=device)
        key_pos = torch.arange(key_start, kv_end, device=device)

        # Per row, the slots written by this forward are [lo, hi); keys below lo must already be cached, and
        # keys at or beyond max(length, hi) hold nothing valid for that row.
        write_mask = None
        row_key_end = None
        if cache is not None:
            if write_range is None:
                lo, hi = start, start + seq
            else:
                lo, hi = (KVCache._as_lengths(t) for t in write_range)
                if lo.shape != (bsz,) or hi.shape != (bsz,) or ((lo < start) | (hi > start + seq)).any():
                    raise ValueError(f"write_range must be two [batch] arrays within [{start}, {start + seq}]")
                lo_t, hi_t = torch.from_numpy(lo).to(device), torch.from_numpy(hi).to(device)
                write_mask = (query_pos[None, :] >= lo_t[:, None]) & (query_pos[None, :] < hi_t[:, None])
            if (cache.lengths < lo).any():
                raise ValueError(
                    f"the forward writes from position(s) {np.broadcast_to(lo, (bsz,)).tolist()} but the cache rows "
                    f"hold only {cache.lengths.tolist()} positions; a gap would be attended as garbage"
                )
            ends = np.maximum(cache.lengths, hi)
            if (ends < kv_end).any():
                row_key_end = torch.from_numpy(ends).to(device)

        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        mask, origin = self._padding_mask(attention_mask, bsz, seq, start, kv_end, cache is not None)

        # Rotary positions: explicit, else from the padding mask (left padding shifts them), else canvas indices.
        if position_ids is not None:
            positions = position_ids.to(device).expand(bsz, seq)
            cos, sin = rotary_cos_sin(positions, self.config.head_dim, self.config.rope_theta)
        else:
            if mask is not None:
                counted = (mask.long().cumsum(-1) - 1).clamp(min=0) + origin
                positions = counted[:, start - origin : start - origin + seq]
            else:
                positions = query_pos.expand(bsz, seq)
            cos, sin = self._rotary_lookup(positions, start + seq, device)

        # Which keys each query may attend to.
        allowed = None
        if mask is not None:
            allowed = mask[:, key_start - origin : kv_end - origin][:, None, None, :]
        if row_key_end is not None:
            valid = (key_pos[None, :] < row_key_end[:, None])[:, None, None, :]
            allowed = valid if allowed is None else allowed & valid
        if causal:
            tri = (key_pos[None, :] <= query_pos[:, None])[None, None]
            allowed = tri if allowed is None else allowed & tri
        if allowed is not None:
            # A query always sees itself, so a padding query never has an empty (NaN) attention row.
            allowed = allowed | (key_pos[None, :] == query_pos[:, None])[None, None]
            allowed = allowed.expand(bsz, 1, seq, kv_end - key_start)
        return AttentionPlan(positions=positions, cos=cos, sin=sin, attn_mask=allowed, cache=cache, start=start,
                             kv_end=kv_end, write_mask=write_mask)

    def _rotary_lookup(self, positions: torch.Tensor, bound: int, device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE ``cos, sin`` ``[B, 1, T, D]`` for positions below ``bound``, from a table built once per device
        (the same values :func:`rotary_cos_sin` computes)."""
        table = self._rope_tables.get(device)
        if table is None or table[0].shape[0] < bound:
            size = max(bound, min(self.config.max_length, 4096))
            # a plain tensor even when first built under inference_mode, so training can use it later
            with torch.inference_mode(False), torch.no_grad():
                cos, sin = rotary_cos_sin(torch.arange(size, device=device)[None, :], self.config.head_dim,
                                          self.config.rope_theta)
            table = (cos[0, 0], sin[0, 0])
            self._rope_tables[device] = table
        return table[0][positions][:, None], table[1][positions][:, None]

    @staticmethod
    def _padding_mask(
        attention_mask: torch.Tensor | None, bsz: int, seq: int, start: int, kv_end: int, cached: bool
    ) -> tuple[torch.Tensor | None, int]:
        """Validate the padding mask; return it as bool and the canvas position of its first column."""
        if attention_mask is None:
            return None, 0
        if attention_mask.ndim != 2 or attention_mask.shape[0] != bsz:
            raise ValueError(f"attention_mask must be [batch={bsz}, keys], got shape {tuple(attention_mask.shape)}")
        width = attention_mask.shape[1]
        if cached:
            if width < kv_end:
                raise ValueError(
                    f"attention_mask covers {width} positions but attention reads cached keys [0, {kv_end}); pass "
                    f"the mask of the whole canvas"
                )
            return attention_mask.bool(), 0
        if width == seq:
            return attention_mask.bool(), start
        if width == start + seq:
            return attention_mask.bool(), 0
        raise ValueError(
            f"attention_mask has {width} columns; expected {seq} (the forwarded tokens) or {start + seq} (from "
            f"position 0)"
        )


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``"bf16"``/``"bfloat16"``/``torch.bfloat16`` -> ``torch.bfloat16``; floating dtypes only."""
    if dtype is None:
        return None
    aliases = {
        "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
        "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
        "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
        "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
    }
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key not in aliases:
            raise ConfigError(f"dtype {dtype!r} is not supported; use one of float32, bfloat16, float16, float64")
        return aliases[key]
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point or dtype not in set(aliases.values()):
            raise ConfigError(f"dtype {dtype} is not usable for model weights; use float32, bfloat16 or float16")
        return dtype
    raise ConfigError(f"dtype {dtype!r} is not a dtype; use a torch.dtype or a name such as 'bfloat16'")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """None -> CUDA when available, else CPU. A device that does not exist here is a :class:`ConfigError`."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a valid torch device ({exc}); use e.g. 'cpu' or 'cuda:0'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was requested but CUDA is not available on this machine; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r} was requested but MPS is not available on this machine; use 'cpu'")
    elif dev.type not in ("cpu", "cuda", "mps", "meta"):
        raise ConfigError(f"device {device!r} is not supported; use 'cpu', 'cuda' or 'mps'")
    return dev
