"""Small random-weight decoders of every family ``llmc export`` knows, as a user's would be.

``family_model("mistral")`` is a 2-layer ``MistralForCausalLM`` built from transformers' own config
class with the family's distinguishing features switched on (sliding windows, soft-capping,
partial rotary, parallel attention and MLP, scaling multipliers, mixtures of experts, QK norms),
seeded, its weights drawn wide enough (``initializer_range`` 0.2, random norm weights and
biases) that greedy choices are not ties. Tests and ``benchmarks.families`` judge llmc's builds of
these against transformers itself. ``VARIANTS`` adds rope scalings (llama3, yarn, longrope,
dynamic) and other layouts of a family (Falcon-7B's multi-query QKV) on top of a family.
"""

from __future__ import annotations

from typing import Any

# hidden 64 = 4 heads x 16 (ONNX Runtime's GroupQueryAttention needs head sizes in multiples of 16)
BASE: dict[str, Any] = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=512,
    max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
)
GQA: dict[str, Any] = dict(num_key_value_heads=2)
_GPT = dict(n_embd=64, n_layer=2, n_head=4, n_positions=1024, vocab_size=512, bos_token_id=1, eos_token_id=2)
_MOE = dict(num_local_experts=4, num_experts_per_tok=2)

# model_type -> its config's arguments beyond BASE (None: the argument is dropped from BASE)
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": GQA,
    "mistral": {**GQA, "sliding_window": 8},
    "mixtral": {**GQA, **_MOE, "sliding_window": None},
    "qwen2": GQA,
    "qwen2_moe": {
        **GQA, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
        "shared_expert_intermediate_size": 128,
    },
    "qwen3": {**GQA, "head_dim": 16},
    "qwen3_moe": {**GQA, "head_dim": 16, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64},
    "gemma": {**GQA, "head_dim": 16},
    "gemma2": {
        **GQA, "head_dim": 16, "sliding_window": 8, "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0, "query_pre_attn_scalar": 16,
    },
    "gemma3_text": {**GQA, "head_dim": 16, "sliding_window": 8, "query_pre_attn_scalar": 16},
    "phi": {**GQA, "partial_rotary_factor": 0.5},
    "phi3": GQA,
    "phimoe": {**GQA, **_MOE, "sliding_window": None},
    "gpt_neox": {"rotary_pct": 0.25, "use_parallel_residual": True},
    "gptj": {**_GPT, "rotary_dim": 8, "n_inner": 128},
    "opt": {"ffn_dim": 128, "word_embed_proj_dim": 64, "init_std": 0.2},
    "olmo": GQA,
    "olmo2": GQA,
    "olmoe": {**GQA, "num_experts": 4, "num_experts_per_tok": 2},
    "stablelm": {**GQA, "partial_rotary_factor": 0.25},
    "starcoder2": {**GQA, "sliding_window": 8},
    "granite": {
        **GQA, "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.1,
        "logits_scaling": 8.0,
    },
    "granitemoe": {
        **GQA, **_MOE, "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
        "attention_multiplier": 0.1, "logits_scaling": 8.0,
    },
    "smollm3": {**GQA, "no_rope_layer_interval": 2},  # every second layer without RoPE (NoPE)
    "nemotron": {**GQA, "partial_rotary_factor": 0.5},
    "cohere": {**GQA, "logit_scale": 0.5},
    "cohere2": {**GQA, "sliding_window": 8, "logit_scale": 0.5},
    "falcon": {"num_kv_heads": 2, "new_decoder_architecture": True},
    "gpt2": _GPT,
    # attention sinks, alternating sliding windows, yarn, biased transposed experts, top-3 routing
    "gpt_oss": {
        **GQA, "num_local_experts": 4, "num_experts_per_tok": 3, "head_dim": 16, "sliding_window": 8,
        "rope_scaling": {
            "rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
            "original_max_position_embeddings": 256,
        },
    },
}
# Whole replacements of BASE (the GPT-style configs name their sizes differently).
_OWN_BASE = {"gptj", "gpt2"}

# name -> (family, extra config): rope scalings GenAI's builder handles, other layouts of a family
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-rope-llama3": ("llama", {"rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }}),
    "llama-rope-yarn": ("llama", {"rope_scaling": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256,
    }}),
    "llama-rope-linear": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    # Falcon-7B's layout: one key/value head, QKV split over heads (the family's is Falcon-40B's)
    "falcon-multi-query": ("falcon", {"new_decoder_architecture": False, "multi_query": True}),
    "phi3-rope-longrope": ("phi3", {"original_max_position_embeddings": 256, "rope_scaling": {
        "rope_type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
        "long_factor": [1.5 + 0.2 * i for i in range(8)],
    }}),
}


def family_config(name: str, **overrides: Any) -> Any:
    """The transformers config of family (or variant) ``name``: BASE, the family's features, ``overrides``."""
    from transformers import CONFIG_MAPPING

    family, extra = VARIANTS.get(name, (name, {}))
    if family not in FAMILIES:
        raise KeyError(f"no test family {name!r}; known: {', '.join(sorted([*FAMILIES, *VARIANTS]))}")
    base = {} if family in _OWN_BASE else dict(BASE)
    arguments = {**base, **FAMILIES[family], **extra, **overrides}
    config = CONFIG_MAPPING[family](**{k: v for k, v in arguments.items() if v is not None})
    if hasattr(config, "initializer_range"):
        config.initializer_range = 0.2
    return config


def family_model(name: str, seed: int = 0, **overrides: Any) -> Any:
    """A seeded ``AutoModelForCausalLM`` of family (or variant) ``name`` in eval mode, fp32."""
    from llmc.export.models import _randomize_norms_and_biases, _torch

    torch = _torch()
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(family_config(name, **overrides), dtype=torch.float32)
    return _randomize_norms_and_biases(model.eval())
