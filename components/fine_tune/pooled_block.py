"""A BERT-style classifier reads the last block's output at the first token only (the pooler takes hidden[:, 0]).
During training and validation that block runs for the first token alone: its keys and values still come from
every token, but the query, attention output and feed-forward run once per text instead of once per token. The
logits and gradients are those of the whole block; for the 6-block MiniLM a step does about a seventh less
arithmetic."""

from __future__ import annotations

from contextlib import contextmanager
from types import MethodType

from components.model.blocks import transformer_blocks

# Model types whose classification head reads the first token of the last BertLayer's output.
FIRST_TOKEN_POOLED = {"bert"}


@contextmanager
def first_token_only(model):
    """Within the context the last block of a BERT classifier computes the first position only (a no-op for other
    architectures, and for attention kernels that take no 4-D mask)."""
    config = model.config
    if config.model_type not in FIRST_TOKEN_POOLED or config._attn_implementation not in ("sdpa", "eager"):
        yield
        return
    block = transformer_blocks(model)[-1]
    block.forward = MethodType(_bert_layer_first_token, block)  # an instance attribute: parameter names stay
    try:
        yield
    finally:
        del block.forward


def _bert_layer_first_token(layer, hidden_states, attention_mask=None, *args, **kwargs):
    """BertLayer.forward for the first position: the output is (batch, 1, hidden)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    attention = layer.attention.self
    first = hidden_states[:, :1]

    def heads(states):
        return states.view(*states.shape[:2], -1, attention.attention_head_size).transpose(1, 2)

    if attention_mask is not None:  # (batch, 1, queries, keys): keep the first query's row
        attention_mask = attention_mask[:, :, :1]
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
    context, _ = attend(
        attention,
        heads(attention.query(first)),
        heads(attention.key(hidden_states)),
        heads(attention.value(hidden_states)),
        attention_mask,
        dropout=attention.dropout.p if layer.training else 0.0,
        scaling=attention.scaling,
    )
    attended = layer.attention.output(context.reshape(first.shape[0], 1, -1), first)
    return layer.output(layer.intermediate(attended), attended)
