"""Model configurations, read from and written to the public ``config.json`` layout.

Three families share one decoder design (pre-norm RMSNorm, rotary attention, SwiGLU MLP):

* **LLaDA** (``model_type`` ``"llada"``): OLMo-style field names (``d_model``, ``n_layers``, ...), bidirectional. A
  field missing from ``config.json`` takes the default of the reference ``ModelConfig`` (GPT-2-like values), exactly
  as the reference loader would; the result is then checked against the layout this project implements, so a folder
  whose missing field would silently change the maths is refused with the key named instead.
* **Dream** (``model_type`` ``"Dream"``): Qwen2 field names (``hidden_size``, ``num_hidden_layers``, ...), q/k/v biases,
  grouped key/value heads, bidirectional.
* **Llama** (``model_type`` ``"llama"``): transformers' ``LlamaConfig`` field names, no biases, **causal**: the
  autoregressive baseline family, loadable by ``LlamaForCausalLM`` as it is.

Unknown fields are kept in ``extra`` and written back unchanged by :meth:`to_dict`, so a loaded folder round-trips.
All classes expose the same family-neutral properties (``hidden_size``, ``num_layers``, ``num_heads``,
``num_kv_heads``, ``head_dim``, ``intermediate_size``, ``vocab_size``, ``max_length``, ``mask_token_id``,
``eos_token_id``) that the model code and the decoders use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from d3llm.errors import ConfigError


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    if isinstance(value, bool) and expected in (int, float, (int, float)):
        return False
    return isinstance(value, expected)


@dataclass
class _BaseConfig:
    """Shared machinery: dict round-trip with unknown keys preserved, type checks with named errors."""

    model_type: ClassVar[str]
    family: ClassVar[str]
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    source: str = field(default="config", repr=False, compare=False)

    @classmethod
    def _fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls) if f.name not in ("extra", "source")}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config.json"):
        """Build a config from a parsed ``config.json``; unknown keys go to ``extra``; types are checked."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = cls._fields()
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in data.items():
            if key == "model_type":
                continue
            if key in known:
                kwargs[key] = value
            else:
                extra[key] = value
        config = cls(**kwargs, extra=extra, source=source)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` content: every known field written explicitly, then the preserved unknown ones."""
        out: dict[str, Any] = {"model_type": self.model_type}
        for name in self._fields():
            out[name] = getattr(self, name)
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    def replace(self, **changes):
        """A copy with some fields changed (validated)."""
        config = dataclasses.replace(self, **changes)
        config.validate()
        return config

    # -- validation helpers -------------------------------------------------------------------------------------
    def _check_type(self, name: str, expected, allow_none: bool = False) -> None:
        value = getattr(self, name)
        if value is None and allow_none:
            return
        if not _type_ok(value, expected):
            names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
            raise ConfigError(f"{self.source}: key '{name}' = {value!r} has the wrong type; expected {names}")

    def _check_positive(self, name: str) -> None:
        self._check_type(name, int)
        if getattr(self, name) <= 0:
            raise ConfigError(f"{self.source}: key '{name}' = {getattr(self, name)!r} must be a positive integer")

    def _check_supported(self, name: str, supported: tuple, why: str) -> None:
        value = getattr(self, name)
        if value not in supported:
            allowed = " or ".join(repr(v) for v in supported)
            raise ConfigError(
                f"{self.source}: key '{name}' = {value!r} is not supported (expected {allowed}); {why}"
            )

    def _check_common(self) -> None:
        if self.hidden_size % self.num_heads != 0 and "head_dim" not in self.extra:
            raise ConfigError(
                f"{self.source}: hidden size {self.hidden_size} is not divisible by the number of heads "
                f"{self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads != 0:
            raise ConfigError(
                f"{self.source}: {self.num_heads} attention heads are not a multiple of {self.num_kv_heads} "
                f"key/value heads"
            )
        if self.head_dim % 2 != 0:
            raise ConfigError(f"{self.source}: rotary embeddings need an even head dimension, got {self.head_dim}")
        for name in ("mask_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not (0 <= value < self.vocab_size):
                raise ConfigError(
                    f"{self.source}: {name} = {value} is outside the vocabulary [0, {self.vocab_size})"
                )

    def validate(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- family-neutral view: hidden_size, num_layers, num_heads, num_kv_heads, intermediate_size, vocab_size,
    #    padded_vocab_size, max_length, rope_theta, rms_norm_eps, tie_word_embeddings, mask/eos ids (subclasses)
    @property
    def head_dim(self) -> int:
        explicit = self.extra.get("head_dim")
        return int(explicit) if explicit else self.hidden_size // self.num_heads

    def describe(self) -> str:
        return (
            f"{self.family}: {self.num_layers} layers, hidden {self.hidden_size}, {self.num_heads} heads "
            f"({self.num_kv_heads} kv), mlp {self.intermediate_size}, vocab {self.vocab_size}"
        )


# ---------------------------------------------------------------------------------------------------------------
# LLaDA
# ---------------------------------------------------------------------------------------------------------------

_LLADA_LAYOUT = "d3llm implements the LLaDA-8B layout (block_type 'llama', silu MLP, RMSNorm, RoPE)"


@dataclass
class LLaDAConfig(_BaseConfig):
    """LLaDA ``config.json``. Defaults are the reference ``ModelConfig`` defaults (used for missing keys)."""

    model_type: ClassVar[str] = "llada"
    family: ClassVar[str] = "llada"

    d_model: int = 768
    n_heads: int = 12
    n_kv_heads: int | None = None
    n_layers: int = 12
    mlp_ratio: int = 4
    mlp_hidden_size: int | None = None
    activation_type: str = "swiglu"
    block_type: str = "sequential"
    block_group_size: int = 1
    alibi: bool = False
    alibi_bias_max: float = 8.0
    rope: bool = False
    rope_full_precision: bool = True
    rope_theta: float = 10000.0
    flash_attention: bool = False
    attention_dropout: float = 0.1
    multi_query_attention: bool | None = None
    attention_layer_norm: bool = False
    attention_layer_norm_with_affine: bool = True
    residual_dropout: float = 0.1
    embedding_dropout: float = 0.1
    input_emb_norm: bool = False
    layer_norm_type: str = "default"
    layer_norm_with_affine: bool = True
    bias_for_layer_norm: bool | None = None
    rms_norm_eps: float = 1e-05
    max_sequence_length: int = 1024
    include_bias: bool = False
    include_qkv_bias: bool | None = False
    scale_logits: bool = False
    vocab_size: int = 50257
    embedding_size: int | None = 50304
    weight_tying: bool = True
    eos_token_id: int | None = 50256
    pad_token_id: int | None = 50256
    mask_token_id: int | None = 50256
    init_device: str | None = None
    init_fn: str = "normal"
    init_std: float = 0.02
    init_cutoff_factor: float | None = None
    precision: str | None = None
    use_cache: bool = False
    architectures: list[str] = field(default_factory=lambda: ["LLaDAModelLM"])
    auto_map: dict[str, str] = field(
        default_factory=lambda: {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        }
    )

    def validate(self) -> None:
        for name in ("d_model", "n_heads", "n_layers", "vocab_size", "max_sequence_length", "block_group_size"):
            self._check_positive(name)
        for name in ("n_kv_heads", "mlp_hidden_size", "embedding_size"):
            if getattr(self, name) is not None:
                self._check_positive(name)
        self._check_type("rope_theta", (int, float))
        self._check_type("rms_norm_eps", (int, float))
        self._check_supported("block_type", ("llama",), _LLADA_LAYOUT)
        self._check_supported("activation_type", ("silu",), _LLADA_LAYOUT)
        self._check_supported("layer_norm_type", ("rms",), _LLADA_LAYOUT)
        self._check_supported("rope", (True,), _LLADA_LAYOUT)
        self._check_supported("alibi", (False,), _LLADA_LAYOUT)
        self._check_supported("block_group_size", (1,), "grouped blocks change the checkpoint key names")
        self._check_supported("attention_layer_norm", (False,), _LLADA_LAYOUT)
        self._check_supported("include_bias", (False,), _LLADA_LAYOUT)
        self._check_supported("include_qkv_bias", (False, None), _LLADA_LAYOUT)
        self._check_supported("input_emb_norm", (False,), _LLADA_LAYOUT)
        self._check_supported("scale_logits", (False,), _LLADA_LAYOUT)
        self._check_supported("layer_norm_with_affine", (True,), _LLADA_LAYOUT)
        self._check_supported("bias_for_layer_norm", (False, None), _LLADA_LAYOUT)
        if self.embedding_size is not None and self.embedding_size < self.vocab_size:
            raise ConfigError(
                f"{self.source}: embedding_size {self.embedding_size} is smaller than vocab_size {self.vocab_size}"
            )
        if self.multi_query_attention and self.n_kv_heads not in (None, 1):
            raise ConfigError(f"{self.source}: multi_query_attention is true but n_kv_heads = {self.n_kv_heads}")
        self._check_common()

    # family-neutral view
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_layers(self) -> int:
        return self.n_layers

    @property
    def num_heads(self) -> int:
        return self.n_heads

    @property
    def num_kv_heads(self) -> int:
        if self.multi_query_attention:
            return 1
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def intermediate_size(self) -> int:
        return self.mlp_hidden_size if self.mlp_hidden_size is not None else self.mlp_ratio * self.d_model

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and of the LM head (``embedding_size`` when set): the width of the logits."""
        return self.embedding_size or self.vocab_size

    @property
    def max_length(self) -> int:
        return self.max_sequence_length

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(self.weight_tying)


def llada_config(
    *,
    d_model: int,
    n_layers: int,
    n_heads: int,
    mlp_hidden_size: int,
    vocab_size: int,
    n_kv_heads: int | None = None,
    max_sequence_length: int = 4096,
    rope_theta: float = 500000.0,
    mask_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    **overrides: Any,
) -> LLaDAConfig:
    """A complete LLaDA config with every field of LLaDA-8B-Instruct's ``config.json``, at a chosen size.

    Special ids default to the last three vocabulary entries (mask = V-1, eos = pad = V-2) for random models.
    """
    mask_token_id = vocab_size - 1 if mask_token_id is None else mask_token_id
    eos_token_id = vocab_size - 2 if eos_token_id is None else eos_token_id
    values = dict(
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads if n_kv_heads is not None else n_heads,
        n_layers=n_layers,
        mlp_ratio=4,
        mlp_hidden_size=mlp_hidden_size,
        activation_type="silu",
        block_type="llama",
        block_group_size=1,
        alibi=False,
        alibi_bias_max=8.0,
        rope=True,
        rope_full_precision=True,
        rope_theta=rope_theta,
        flash_attention=False,
        attention_dropout=0.0,
        multi_query_attention=None,
        attention_layer_norm=False,
        attention_layer_norm_with_affine=True,
        residual_dropout=0.0,
        embedding_dropout=0.0,
        input_emb_norm=False,
        layer_norm_type="rms",
        layer_norm_with_affine=True,
        bias_for_layer_norm=False,
        rms_norm_eps=1e-05,
        max_sequence_length=max_sequence_length,
        include_bias=False,
        include_qkv_bias=False,
        scale_logits=False,
        vocab_size=vocab_size,
        embedding_size=vocab_size,
        weight_tying=False,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id if pad_token_id is None else pad_token_id,
        mask_token_id=mask_token_id,
        init_device="meta",
        init_fn="mitchell",
        init_std=0.02,
        init_cutoff_factor=None,
        precision="amp_bf16",
        use_cache=False,
    )
    values.update(overrides)
    config = LLaDAConfig(**values, source="llada_config()")
    config.validate()
    return config


# ---------------------------------------------------------------------------------------------------------------
# The transformers decoder layout (field names of Llama / Qwen2): Dream and Llama
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _DecoderConfig(_BaseConfig):
    """Fields, checks and the family-neutral view shared by the layouts with transformers' Llama/Qwen2 field names.

    Subclasses redeclare fields whose default differs (the defaults are those of each family's reference config).
    """

    layout: ClassVar[str] = ""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    tie_word_embeddings: bool = False
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    attention_dropout: float = 0.0
    mask_token_id: int | None = None
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    torch_dtype: str | None = None

    def validate(self) -> None:
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "vocab_size", "max_position_embeddings"):
            self._check_positive(name)
        if self.num_key_value_heads is not None:
            self._check_positive("num_key_value_heads")
        self._check_type("rope_theta", (int, float))
        self._check_type("rms_norm_eps", (int, float))
        self._check_supported("hidden_act", ("silu",), self.layout)
        if self.rope_scaling is not None and self.rope_scaling.get("rope_type", self.rope_scaling.get("type")) not in (
            None,
            "default",
        ):
            raise ConfigError(
                f"{self.source}: key 'rope_scaling' = {self.rope_scaling!r} is not supported (expected null); "
                f"{self.layout}"
            )
        self._check_common()

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def num_heads(self) -> int:
        return self.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_key_value_heads if self.num_key_value_heads is not None else self.num_attention_heads

    @property
    def padded_vocab_size(self) -> int:
        return self.vocab_size

    @property
    def max_length(self) -> int:
        return self.max_position_embeddings

    @property
    def qkv_bias(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError


def _decoder_config(config_cls: type[_DecoderConfig], family_values: dict[str, Any], *, hidden_size: int,
                    num_hidden_layers: int, num_attention_heads: int, num_key_value_heads: int,
                    intermediate_size: int, vocab_size: int, max_position_embeddings: int = 4096,
                    mask_token_id: int | None = None, eos_token_id: int | None = None,
                    **overrides: Any) -> _DecoderConfig:
    """A complete config of a transformers-layout family at a chosen size, every field written explicitly: the
    shared values, then the family's ``family_values``, then ``overrides`` (any field). Special ids default to the
    last vocabulary entries (mask = V-1, eos = pad = bos = V-2) for random models."""
    mask_token_id = vocab_size - 1 if mask_token_id is None else mask_token_id
    eos_token_id = vocab_size - 2 if eos_token_id is None else eos_token_id
    values = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        hidden_act="silu",
        max_position_embeddings=max_position_embeddings,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=False,
        tie_word_embeddings=False,
        rope_scaling=None,
        attention_dropout=0.0,
        mask_token_id=mask_token_id,
        pad_token_id=eos_token_id,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        torch_dtype="float32",
    )
    values.update(family_values)
    values.update(overrides)
    config = config_cls(**values, source=f"{config_cls.family}_config()")
    config.validate()
    return config


# -- Dream ------------------------------------------------------------------------------------------------------

@dataclass
class DreamConfig(_DecoderConfig):
    """Dream ``config.json`` (Qwen2 field names). Defaults are the reference ``DreamConfig`` defaults."""

    model_type: ClassVar[str] = "Dream"
    family: ClassVar[str] = "dream"
    layout: ClassVar[str] = (
        "d3llm implements the Dream-v0 layout (Qwen2 decoder, silu MLP, default RoPE, full attention)"
    )

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 22016
    num_key_value_heads: int | None = 32
    max_position_embeddings: int = 32768
    use_cache: bool = False
    use_sliding_window: bool = False
    sliding_window: int | None = 4096
    max_window_layers: int = 28
    mask_token_id: int | None = 151666
    pad_token_id: int | None = 151643
    bos_token_id: int | None = 151643
    eos_token_id: int | None = 151643
    torch_dtype: str | None = "bfloat16"
    architectures: list[str] = field(default_factory=lambda: ["DreamModel"])
    auto_map: dict[str, str] = field(
        default_factory=lambda: {
            "AutoConfig": "configuration_dream.DreamConfig",
            "AutoModel": "modeling_dream.DreamModel",
        }
    )

    def validate(self) -> None:
        self._check_supported("use_sliding_window", (False,), self.layout)
        super().validate()

    @property
    def qkv_bias(self) -> bool:
        return True


def dream_config(**spec: Any) -> DreamConfig:
    """A complete Dream config at a chosen size (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``num_key_value_heads``, ``intermediate_size``, ``vocab_size``; any other field as an override); see
    :func:`_decoder_config`."""
    family = {"rope_theta": 1000000.0, "use_sliding_window": False, "sliding_window": None,
              "max_window_layers": spec.get("num_hidden_layers")}
    return _decoder_config(DreamConfig, family, **spec)


# -- Llama ------------------------------------------------------------------------------------------------------

@dataclass
class LlamaConfig(_DecoderConfig):
    """Llama ``config.json`` (transformers' ``LlamaConfig`` field names and defaults): the causal family.

    ``mask_token_id`` is ours (transformers keeps it as a plain attribute): the id the decoding canvas holds at
    positions not yet generated. transformers 5 writes ``rope_parameters`` instead of ``rope_theta`` /
    ``rope_scaling``; both spellings are read, the 4.x one is written (every version reads it).
    """

    model_type: ClassVar[str] = "llama"
    family: ClassVar[str] = "llama"
    layout: ClassVar[str] = (
        "d3llm implements the Llama layout without biases (silu MLP, default RoPE, causal attention)"
    )

    pretraining_tp: int = 1
    attention_bias: bool = False
    mlp_bias: bool = False
    architectures: list[str] = field(default_factory=lambda: ["LlamaForCausalLM"])

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config.json"):
        if isinstance(data, dict) and isinstance(data.get("rope_parameters"), dict):
            data = dict(data)
            rope = dict(data.pop("rope_parameters"))
            data.setdefault("rope_theta", rope.pop("rope_theta", cls.rope_theta))
            if rope.get("rope_type", "default") != "default" or set(rope) - {"rope_type"}:
                data.setdefault("rope_scaling", rope)
        return super().from_dict(data, source)

    def validate(self) -> None:
        self._check_supported("attention_bias", (False,), self.layout)
        self._check_supported("mlp_bias", (False,), self.layout)
        self._check_type("pretraining_tp", int)
        super().validate()

    @property
    def qkv_bias(self) -> bool:
        return False


def llama_config(**spec: Any) -> LlamaConfig:
    """A complete Llama config at a chosen size (the same arguments as :func:`dream_config`)."""
    family = {"rope_theta": 500000.0, "use_cache": True, "pretraining_tp": 1, "attention_bias": False,
              "mlp_bias": False}
    return _decoder_config(LlamaConfig, family, **spec)


ModelConfig = LLaDAConfig | DreamConfig | LlamaConfig

CONFIG_CLASSES: dict[str, type[_BaseConfig]] = {"llada": LLaDAConfig, "Dream": DreamConfig, "llama": LlamaConfig}


def config_from_dict(data: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Dispatch on ``model_type``; an unknown or missing type is a :class:`ConfigError` naming the value."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
    model_type = data.get("model_type")
    if model_type is None:
        raise ConfigError(f"{source}: key 'model_type' is missing; expected one of {sorted(CONFIG_CLASSES)}")
    cls = CONFIG_CLASSES.get(model_type)
    if cls is None:
        lowered = {k.lower(): k for k in CONFIG_CLASSES}
        hint = f" (did you mean {lowered[model_type.lower()]!r}?)" if str(model_type).lower() in lowered else ""
        raise ConfigError(
            f"{source}: model_type {model_type!r} is not supported{hint}; expected one of {sorted(CONFIG_CLASSES)}"
        )
    return cls.from_dict(data, source=source)


# ---------------------------------------------------------------------------------------------------------------
# Named configs for tests and demos
# ---------------------------------------------------------------------------------------------------------------

NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    # ~0.1 M parameters: unit tests.
    "llada-tiny": dict(family="llada", d_model=64, n_layers=2, n_heads=4, mlp_hidden_size=128, vocab_size=128,
                       max_sequence_length=1024),
    "dream-tiny": dict(family="dream", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, vocab_size=128, max_position_embeddings=1024),
    # ~0.8 M parameters (without the embedding): the built-in task's teacher size.
    "llada-small": dict(family="llada", d_model=128, n_layers=4, n_heads=4, mlp_hidden_size=384, vocab_size=256,
                        max_sequence_length=1024),
    "dream-small": dict(family="dream", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=384, vocab_size=256, max_position_embeddings=1024),
    # Causal (autoregressive) models: llama-small has exactly llada-small's shape and parameter count (the
    # autoregressive baseline of the built-in task); llama-tiny groups key/value heads, as dream-tiny does.
    "llama-tiny": dict(family="llama", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, vocab_size=128, max_position_embeddings=1024),
    "llama-small": dict(family="llama", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                        num_key_value_heads=4, intermediate_size=384, vocab_size=256, max_position_embeddings=1024),
}

# The public checkpoints' shapes (SPEC 2.1 and 2.5): random weights in these layouts (``d3llm init``) test
# infrastructure at real scale, and a real folder's config.json loads into the same config. The d3LLM checkpoints
# (d3LLM_LLaDA, d3LLM_Dream) share these layouts.
_LLADA_8B = dict(family="llada", d_model=4096, n_layers=32, n_heads=32, mlp_hidden_size=12288, vocab_size=126464,
                 max_sequence_length=4096, mask_token_id=126336, eos_token_id=126081)
_DREAM_7B = dict(family="dream", hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, intermediate_size=18944, vocab_size=152064, max_position_embeddings=131072,
                 mask_token_id=151666, eos_token_id=151643, torch_dtype="bfloat16")
NAMED_CONFIGS.update({
    "llada-8b-instruct": _LLADA_8B, "d3llm-llada": _LLADA_8B,
    "dream-7b-instruct": _DREAM_7B, "d3llm-dream": _DREAM_7B,
})

CONFIG_BUILDERS = {"llada": llada_config, "dream": dream_config, "llama": llama_config}


def named_config(name: str, **overrides: Any) -> ModelConfig:
    """Build one of :data:`NAMED_CONFIGS`, with optional field overrides (``vocab_size=...``, special ids...)."""
    if name not in NAMED_CONFIGS:
        raise ConfigError(f"unknown model config {name!r}; expected one of {sorted(NAMED_CONFIGS)}")
    spec = dict(NAMED_CONFIGS[name])
    family = spec.pop("family")
    spec.update(overrides)
    try:
        return CONFIG_BUILDERS[family](**spec)
    except TypeError as exc:  # an override that is not a field
        raise ConfigError(f"config {name!r}: {exc}") from None
