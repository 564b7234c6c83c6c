"""A BERT encoder whose layers keep fewer attention heads than its head size implies: what
``llmc compress --heads`` writes for BERT-style models.

A ``BertConfig`` ties the head size to ``hidden_size / num_attention_heads``, so a layer with 9
of its 12 heads cannot be written as one. ``PrunedBertConfig`` keeps ``num_attention_heads``
(the original count, which fixes the head size) and adds ``attention_heads_kept``, the heads
each layer still has; ``PrunedBertModel`` is ``BertModel`` with those layers' query/key/value
and output projections narrowed to match. This file imports only ``torch`` and
``transformers``: ``save_pretrained`` copies it beside the weights, so the directory loads with
``AutoModel.from_pretrained(dir, trust_remote_code=True)``; ``llmc export`` loads it with this
class instead, running no code from the directory.
"""

from __future__ import annotations

from torch import nn
from transformers import BertConfig, BertModel


class PrunedBertConfig(BertConfig):
    model_type = "llmc_pruned_bert"

    def __init__(self, attention_heads_kept: list[int] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.attention_heads_kept = list(attention_heads_kept or [])


class PrunedBertModel(BertModel):
    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        for layer, heads in zip(self.encoder.layer, config.attention_heads_kept, strict=False):
            attention = layer.attention.self
            width = heads * attention.attention_head_size
            attention.num_attention_heads, attention.all_head_size = heads, width
            for name in ("query", "key", "value"):
                setattr(attention, name, nn.Linear(config.hidden_size, width))
            layer.attention.output.dense = nn.Linear(width, config.hidden_size)


PrunedBertConfig.register_for_auto_class()
PrunedBertModel.register_for_auto_class("AutoModel")
