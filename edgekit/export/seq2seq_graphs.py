"""The graphs of an encoder-decoder (T5 and its variants): ``encoder`` and the cacheless ``decoder``
(every position of the target at once), or, where the decoder has T5's layout, ``encoder``,
``cross_kv`` (the cross-attention keys and values, once per source) and ``decoder_step`` (one token
with per-layer self-attention keys and values in and grown by one position out). The task spec's
``graphs`` job for encoder-decoders."""

from __future__ import annotations

import torch

from edgekit.export.graphs import Graph
from edgekit.models.handle import ModelHandle


class _Encoder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class FullDecoder(torch.nn.Module):
    """Decoder logits for every position of ``decoder_input_ids`` given the encoder's states (no cache)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, decoder_input_ids, hidden, attention_mask):
        return self.model(
            encoder_outputs=(hidden,),
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
        ).logits


def cache_refusal(model) -> str | None:
    """Why the cached decoder step cannot be built for ``model`` (None: it can). The step is written for
    T5's layout: relative position bias in the first decoder block only, self-attention, cross-attention
    and feed-forward sub-layers (T5, flan-T5, T5 v1.1; not mT5's UMT5 variant or BART)."""
    blocks = getattr(getattr(model, "decoder", None), "block", None)
    if blocks is None or not len(blocks):
        return f"{type(model).__name__} is not T5-shaped (no decoder.block)"
    for index, block in enumerate(blocks):
        layers = getattr(block, "layer", [])
        if len(layers) != 3 or not hasattr(layers[0], "SelfAttention") or not hasattr(layers[1], "EncDecAttention"):
            return f"decoder block {index} is not T5's self-attention, cross-attention, feed-forward"
        if bool(layers[0].SelfAttention.has_relative_attention_bias) != (index == 0):
            return "the decoder has relative position bias in more blocks than the first (UMT5-style)"
    return None


def _heads(x: torch.Tensor, attention) -> torch.Tensor:
    """(batch, length, heads*d_kv) -> (batch, heads, length, d_kv)."""
    return x.view(x.shape[0], x.shape[1], attention.n_heads, attention.key_value_proj_dim).transpose(1, 2)


def cache_names(kind: str, layers: int) -> list[str]:
    """The per-layer cache tensors of a decoder step, keys and values apart (``past``, ``present`` or
    ``cross``): ``past_key_0, past_value_0, past_key_1, ...``. One tensor each, so a step reads and writes
    them in place of slicing (and copying) a stacked cache every token."""
    return [f"{kind}_{part}_{index}" for index in range(layers) for part in ("key", "value")]


class _CrossKV(torch.nn.Module):
    """The cross-attention keys and values of every decoder block, computed once per source: 2 x layers
    tensors (batch, heads, source, d_kv) in ``cache_names("cross", layers)`` order."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, hidden):
        out = []
        for block in self.model.decoder.block:
            attention = block.layer[1].EncDecAttention
            out += [_heads(attention.k(hidden), attention), _heads(attention.v(hidden), attention)]
        return tuple(out)


class _DecoderStep(torch.nn.Module):
    """One decoder position with a KV cache: the next token's logits (batch, 1, vocab), then each block's
    self-attention keys and values grown by one position (batch, heads, past + 1, d_kv). Inputs: the
    token, the source mask, the past keys/values and the cross keys/values (``cache_names`` order; the
    past may have length 0, the first step). Same arithmetic as T5's eager attention: no query scaling,
    the first block's relative position bias shared by all blocks, the source padding masked in
    cross-attention."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, decoder_input_ids, attention_mask, *cache):
        decoder = self.model.decoder
        layers = len(decoder.block)
        past, cross = cache[: 2 * layers], cache[2 * layers :]
        x = decoder.embed_tokens(decoder_input_ids)
        position = past[0].shape[2]
        first = decoder.block[0].layer[0].SelfAttention
        relative = torch.arange(position + 1, device=x.device)[None, :] - position
        bucket = first._relative_position_bucket(
            relative,
            bidirectional=False,
            num_buckets=first.relative_attention_num_buckets,
            max_distance=first.relative_attention_max_distance,
        )
        bias = first.relative_attention_bias(bucket).permute(2, 0, 1).unsqueeze(0)  # (1, heads, 1, past + 1)
        source_mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        batch = x.shape[0]
        present = []
        for index, block in enumerate(decoder.block):
            layer = block.layer[0]
            attention = layer.SelfAttention
            normed = layer.layer_norm(x)
            query = _heads(attention.q(normed), attention)
            key = torch.cat([past[2 * index], _heads(attention.k(normed), attention)], dim=2)
            value = torch.cat([past[2 * index + 1], _heads(attention.v(normed), attention)], dim=2)
            present += [key, value]
            weights = torch.softmax((query @ key.transpose(-1, -2) + bias).float(), dim=-1).type_as(query)
            x = x + attention.o((weights @ value).transpose(1, 2).reshape(batch, 1, -1))
            layer = block.layer[1]
            attention = layer.EncDecAttention
            query = _heads(attention.q(layer.layer_norm(x)), attention)
            scores = query @ cross[2 * index].transpose(-1, -2) + source_mask
            weights = torch.softmax(scores.float(), dim=-1).type_as(query)
            x = x + attention.o((weights @ cross[2 * index + 1]).transpose(1, 2).reshape(batch, 1, -1))
            x = block.layer[2](x)
        x = decoder.final_layer_norm(x)
        if self.model.config.tie_word_embeddings:
            x = x * (self.model.model_dim**-0.5)
        return (self.model.lm_head(x), *present)


def encoder_decoder_graphs(handle: ModelHandle, kv_cache: bool = False) -> list[Graph]:
    """``encoder`` (ids -> hidden states), then either ``decoder`` (target ids, hidden -> logits of every
    position; each generated token re-runs it) or, with ``kv_cache`` and a T5-shaped model, ``cross_kv``
    (hidden -> the cross-attention keys/values, once per source) and ``decoder_step`` (one token, the
    cache -> its logits and the grown cache)."""
    model = handle.module
    example = handle.example_inputs(batch=2, seq_len=12)
    ids, mask = example["input_ids"], example["attention_mask"]
    mask[1, 9:] = 0
    with torch.no_grad():
        hidden = _Encoder(model)(ids, mask)
    encoder = Graph(
        "encoder",
        _Encoder(model),
        ["input_ids", "attention_mask"],
        "hidden",
        (ids, mask),
        [{0: "batch", 1: "source"}] * 2,
        ["int64", "int64"],
    )
    if kv_cache and cache_refusal(model) is None:
        with torch.no_grad():
            cross = _CrossKV(model)(hidden)
        layers = len(model.decoder.block)
        _, heads, _, d_kv = cross[0].shape
        past = tuple(torch.randn(2, heads, 3, d_kv) for _ in range(2 * layers))
        step_ids = torch.randint(5, int(model.config.vocab_size), (2, 1))
        cross_names, past_names = cache_names("cross", layers), cache_names("past", layers)
        cross_axes, past_axes = {0: "batch", 2: "source"}, {0: "batch", 2: "past"}
        return [
            encoder,
            Graph(
                "cross_kv",
                _CrossKV(model),
                ["hidden"],
                cross_names[0],
                (hidden,),
                [{0: "batch", 1: "source"}],
                ["float32"],
                extra_outputs=tuple(cross_names[1:]),
            ),
            Graph(
                "decoder_step",
                _DecoderStep(model),
                ["decoder_input_ids", "attention_mask", *past_names, *cross_names],
                "logits",
                (step_ids, mask, *past, *cross),
                [{0: "batch"}, {0: "batch", 1: "source"}] + [past_axes] * len(past) + [cross_axes] * len(cross),
                ["int64", "int64"] + ["float32"] * (len(past) + len(cross)),
                legacy_first=True,  # the past axis starts at 0, which torch.export's dimensions do not allow
                extra_outputs=tuple(cache_names("present", layers)),
            ),
        ]
    decoder_ids = torch.randint(5, int(model.config.vocab_size), (2, 5))
    return [
        encoder,
        Graph(
            "decoder",
            FullDecoder(model),
            ["decoder_input_ids", "hidden", "attention_mask"],
            "logits",
            (decoder_ids, hidden, mask),
            [{0: "batch", 1: "target"}, {0: "batch", 1: "source"}, {0: "batch", 1: "source"}],
            ["int64", "float32", "int64"],
            legacy_first=True,
        ),
    ]
