"""The text towers rewritten for an inference graph: what `clipsearch.models.export` exports.

The output is the family's text embedding as transformers computes it (CLIP's
`CLIPTextModelWithProjection(...).text_embeds`, SigLIP's `SiglipTextModel(...).pooler_output`),
with fewer and larger operations, because a query's cost on a CPU is mostly per-operation
overhead and matrix products with a few dozen rows:

- every linear layer runs on the flattened (batch x tokens, width) activations: one 2-D MatMul
  and one Add, which ONNX Runtime fuses into a Gemm (and the int8 quantiser still recognises);
- query, key and value come from one product with the three weights side by side;
- the last layer computes keys and values for every token but the rest (query, attention output,
  MLP) only for the pooled token, the one row the output reads.

The last point is exact, not an approximation: the final layer's other rows are never read.
CLIP pools its end-of-text token under a causal mask; SigLIP pools its last position and attends
to every position, padding included, with no mask (families.py says where each rule comes
from). The exporter checks the graph against transformers' own forward before writing it
(`export._check_text_graph`).

Measured on ViT-B/32 (onnxruntime 1.32, 2 threads, 13 tokens): 7.7 -> 7.3 ms fp32 and
2.8 -> 2.4 ms int8 against the graph traced from transformers' module. On SigLIP B/16's text tower
(64 positions, compute-bound) the gain is smaller: 107.0 -> 104.7 ms on one thread, 77.1 -> 73.5
ms on two (720 graph nodes against 1,046; medians of 25 interleaved queries, fp32).
"""

from __future__ import annotations

import torch
from torch import nn


class PooledText(nn.Module):
    """`model` (a CLIPTextModelWithProjection or a SiglipTextModel) as an inference graph:
    (input_ids, attention_mask) -> text_embeds for CLIP, (input_ids) -> text_embeds for SigLIP."""

    def __init__(self, model):
        super().__init__()
        # CLIP keeps its transformer under `text_model` and projects with `text_projection`
        # (no bias); SigLIP's SiglipTextModel is the transformer and ends in `head` (with bias).
        tm = model.text_model if hasattr(model, "text_projection") else model
        cfg = tm.config
        self.causal = hasattr(model, "text_projection")
        self.eos_token_id = getattr(tm, "eos_token_id", None)
        self.heads = cfg.num_attention_heads
        self.width = cfg.hidden_size
        self.head_dim = self.width // self.heads
        self.scale = self.head_dim**-0.5
        self.n_layers = len(tm.encoder.layers)
        # The modules whose forward is reused as is (layer norms and the configured activation).
        self.norms = nn.ModuleList([n for layer in tm.encoder.layers for n in (layer.layer_norm1, layer.layer_norm2)])
        self.acts = nn.ModuleList([layer.mlp.activation_fn for layer in tm.encoder.layers])
        self.final_layer_norm = tm.final_layer_norm

        def keep(name: str, t: torch.Tensor) -> None:  # buffers export as initializers the quantiser sees
            self.register_buffer(name, t.detach().clone().contiguous())

        d = self.width
        keep("token_embedding", tm.embeddings.token_embedding.weight)
        keep("position_embedding", tm.embeddings.position_embedding.weight)
        for i, layer in enumerate(tm.encoder.layers):
            attn, mlp = layer.self_attn, layer.mlp
            w_qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).t()
            b_qkv = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])
            if i < self.n_layers - 1:
                keep(f"w_qkv_{i}", w_qkv), keep(f"b_qkv_{i}", b_qkv)
            else:
                keep(f"w_q_{i}", w_qkv[:, :d]), keep(f"b_q_{i}", b_qkv[:d])
                keep(f"w_kv_{i}", w_qkv[:, d:]), keep(f"b_kv_{i}", b_qkv[d:])
            keep(f"w_o_{i}", attn.out_proj.weight.t()), keep(f"b_o_{i}", attn.out_proj.bias)
            keep(f"w_fc1_{i}", mlp.fc1.weight.t()), keep(f"b_fc1_{i}", mlp.fc1.bias)
            keep(f"w_fc2_{i}", mlp.fc2.weight.t()), keep(f"b_fc2_{i}", mlp.fc2.bias)
        if self.causal:
            keep("projection", model.text_projection.weight.t())
        else:
            keep("head_w", model.head.weight.t()), keep("head_b", model.head.bias)

    def _linear(self, x: torch.Tensor, name: str, i: int) -> torch.Tensor:
        return torch.matmul(x, getattr(self, f"w_{name}_{i}")) + getattr(self, f"b_{name}_{i}")

    def _attend(self, q, k, v, bias):
        """Eager attention as transformers computes it: softmax(q k^T * scale + mask) v."""
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        weights = torch.softmax(scores if bias is None else scores + bias, dim=-1)
        return torch.matmul(weights, v)

    def _pooled(self, input_ids: torch.Tensor, t: int) -> torch.Tensor:
        """The position each row's embedding is read from."""
        if not self.causal:  # SigLIP: the last position, "which may be padding"
            return torch.full((input_ids.shape[0],), t - 1, dtype=torch.int64)
        # CLIP: the end-of-text token, chosen as transformers chooses it (eos_token_id 2: pre-#24773 configs).
        ids = input_ids.to(torch.int32)
        return ids.argmax(-1) if self.eos_token_id == 2 else (ids == self.eos_token_id).to(torch.int32).argmax(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t = input_ids.shape
        d, h, dh = self.width, self.heads, self.head_dim
        x = (self.token_embedding[input_ids] + self.position_embedding[:t]).reshape(b * t, d)
        bias = None
        if self.causal:
            pos = torch.arange(t)
            # transformers' mask: causal, and padding keys hidden; additive, the dtype's minimum.
            allowed = (pos[None, :] <= pos[:, None])[None] & (attention_mask[:, None, :] > 0)
            bias = torch.where(allowed, 0.0, torch.finfo(torch.float32).min).unsqueeze(1)  # (b, 1, t, t)
        pooled = self._pooled(input_ids, t)
        rows = torch.arange(b) * t + pooled
        last = self.n_layers - 1
        for i in range(self.n_layers):
            y = self.norms[2 * i](x)
            if i < last:
                qkv = self._linear(y, "qkv", i).reshape(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)
                attended = self._attend(qkv[0], qkv[1], qkv[2], bias).transpose(1, 2).reshape(b * t, d)
                x = x + self._linear(attended, "o", i)
            else:  # the pooled rows only, attending to every token they may see
                kv = self._linear(y, "kv", i).reshape(b, t, 2, h, dh).permute(2, 0, 3, 1, 4)
                q = self._linear(y[rows], "q", i).reshape(b, h, 1, dh)
                row_bias = None if bias is None else bias[torch.arange(b), :, pooled].unsqueeze(2)
                attended = self._attend(q, kv[0], kv[1], row_bias).reshape(b, d)
                x = x[rows] + self._linear(attended, "o", i)
            y = self.norms[2 * i + 1](x)
            x = x + self._linear(self.acts[i](self._linear(y, "fc1", i)), "fc2", i)
        x = self.final_layer_norm(x)
        if self.causal:
            return torch.matmul(x, self.projection)
        return torch.matmul(x, self.head_w) + self.head_b
