"""A torch module with the residual layout of a Tracr-compiled transformer: one-hot token and
position embeddings, blocks of (attention, ReLU MLP) added to the residual stream, no LayerNorm,
non-causal attention that ignores PAD keys, and a fixed read-out that projects the residual stream
onto the output subspace (argmax = the program's answer). Weights come from
`wrapperdist.settings.tracr.compile` or a checkpoint; no JAX here.

Same hook points as the GPT model, so probing, pruning and attention maps apply unchanged:
embed, blocks.i.attn.pattern, blocks.i.attn.heads, blocks.i.mlp.hidden, blocks.i.resid_post."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wrapperdist.models.hooks import HookedModule, HookPoint


@dataclass(frozen=True)
class TracrShape:
    n_layer: int
    n_head: int
    key_size: int
    d_mlp: int
    d_model: int
    vocab_size: int
    n_positions: int  # rows of the position table: BOS + max_len
    n_answers: int
    pad_id: int
    readout_scale: float = 10.0  # logits = scale × (projection onto the output subspace), 0/1 when compiled

    @property
    def seq_len(self) -> int:
        return self.n_positions

    def to_dict(self) -> dict:
        return asdict(self)


class TracrAttention(nn.Module):
    def __init__(self, shape: TracrShape):
        super().__init__()
        width = shape.n_head * shape.key_size
        self.n_head, self.key_size = shape.n_head, shape.key_size
        self.q, self.k, self.v = (nn.Linear(shape.d_model, width) for _ in range(3))
        self.proj = nn.Linear(width, shape.d_model)
        self.pattern = HookPoint()
        self.heads = HookPoint()

    def forward(self, x: torch.Tensor, key_is_pad: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = (m(x).view(B, T, self.n_head, self.key_size).transpose(1, 2) for m in (self.q, self.k, self.v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.key_size)
        scores = scores.masked_fill(key_is_pad[:, None, None, :], -1e30)  # as Tracr: a finite -inf
        y = self.pattern(scores.softmax(dim=-1)) @ v
        y = self.heads(y.transpose(1, 2))  # (B, T, H, key_size)
        return self.proj(y.reshape(B, T, -1))


class TracrMLP(nn.Module):
    def __init__(self, shape: TracrShape):
        super().__init__()
        self.fc = nn.Linear(shape.d_model, shape.d_mlp)
        self.hidden = HookPoint()
        self.out = nn.Linear(shape.d_mlp, shape.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(F.relu(self.fc(x))))


class TracrBlock(nn.Module):
    def __init__(self, shape: TracrShape):
        super().__init__()
        self.attn = TracrAttention(shape)
        self.mlp = TracrMLP(shape)
        self.resid_post = HookPoint()

    def forward(self, x: torch.Tensor, key_is_pad: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, key_is_pad)
        return self.resid_post(x + self.mlp(x))


class TracrTransformer(HookedModule):
    arch = "tracr"

    def __init__(self, shape: TracrShape):
        super().__init__()
        self.shape = shape
        self.tok_emb = nn.Embedding(shape.vocab_size, shape.d_model)
        self.pos_emb = nn.Embedding(shape.n_positions, shape.d_model)
        self.embed = HookPoint()
        self.blocks = nn.ModuleList(TracrBlock(shape) for _ in range(shape.n_layer))
        # The read-out is the compiled program's output subspace: a fixed projection, not a parameter,
        # so fine-tuning must change the computation rather than relabel the outputs.
        self.register_buffer("unembed", torch.zeros(shape.d_model, shape.n_answers))
        for module in self.modules():  # random init (the analysis's "random init" control)
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)
        self.name_hook_points()

    def forward(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Answer logits (B, T, n_answers), or (B, n_answers) at the last position. Rows are
        left-padded: positions count from BOS, as in the compiled model."""
        T = tokens.shape[1]
        is_pad = tokens == self.shape.pad_id
        pos = (torch.arange(T, device=tokens.device) - is_pad.sum(1, keepdim=True)).clamp(min=0)
        x = self.embed(self.tok_emb(tokens) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x, is_pad)
        if last_only:
            x = x[:, -1]
        return self.shape.readout_scale * (x @ self.unembed)
