"""A minGPT-style decoder-only transformer (pre-LayerNorm, learned positions, GELU MLP) with
named hook points for reading activations and masking MLP units or attention heads.

Hook points per block i:
  blocks.i.attn.pattern   (B, H, T, T) attention probabilities (computed explicitly only when recorded)
  blocks.i.attn.heads     (B, T, H, d_head) per-head outputs before the output projection; mask (H, 1)
  blocks.i.mlp.hidden     (B, T, d_mlp) MLP units after the nonlinearity; mask (d_mlp,)
  blocks.i.resid_post     (B, T, d_model) residual stream after the block
and `embed` (B, T, d_model), the residual stream entering block 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from wrapperdist.models.hooks import HookedModule, HookPoint

if TYPE_CHECKING:
    from wrapperdist.config import ModelConfig


@dataclass(frozen=True)
class GPTShape:
    vocab_size: int
    seq_len: int
    n_layer: int
    n_head: int
    d_model: int
    d_mlp: int
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, model: ModelConfig, vocab_size: int, seq_len: int) -> GPTShape:
        """The shape an experiment's `model:` section gives, for a setting's vocabulary and length
        (the MLP width defaults to 4 x d_model, as in the paper's minGPT)."""
        return cls(vocab_size=vocab_size, seq_len=seq_len, n_layer=model.n_layer, n_head=model.n_head,
                   d_model=model.d_model, d_mlp=model.d_mlp or 4 * model.d_model, dropout=model.dropout)


class Attention(nn.Module):
    def __init__(self, shape: GPTShape):
        super().__init__()
        assert shape.d_model % shape.n_head == 0, "d_model must be divisible by n_head"
        self.n_head, self.d_head = shape.n_head, shape.d_model // shape.n_head
        self.qkv = nn.Linear(shape.d_model, 3 * shape.d_model)
        self.proj = nn.Linear(shape.d_model, shape.d_model)
        self.dropout = shape.dropout
        self.pattern = HookPoint()
        self.heads = HookPoint()
        mask = torch.tril(torch.ones(shape.seq_len, shape.seq_len, dtype=torch.bool))
        self.register_buffer("causal", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.d_head).transpose(1, 2) for t in (q, k, v))
        if self.pattern.active or self.pattern.mask is not None:
            # The explicit path: only taken when someone wants to read or edit the pattern.
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
            scores = scores.masked_fill(~self.causal[:T, :T], float("-inf"))
            att = self.pattern(scores.softmax(dim=-1))
            att = F.dropout(att, self.dropout, self.training)
            y = att @ v
        else:
            p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        y = self.heads(y.transpose(1, 2))  # (B, T, H, d_head): a (H, 1) mask silences whole heads
        return self.proj(y.reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, shape: GPTShape):
        super().__init__()
        self.fc = nn.Linear(shape.d_model, shape.d_mlp)
        self.hidden = HookPoint()
        self.out = nn.Linear(shape.d_mlp, shape.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, shape: GPTShape):
        super().__init__()
        self.ln1 = nn.LayerNorm(shape.d_model)
        self.attn = Attention(shape)
        self.ln2 = nn.LayerNorm(shape.d_model)
        self.mlp = MLP(shape)
        self.drop = nn.Dropout(shape.dropout)
        self.resid_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return self.resid_post(x)


class GPT(HookedModule):
    arch = "gpt"

    def __init__(self, shape: GPTShape):
        super().__init__()
        self.shape = shape
        self.tok_emb = nn.Embedding(shape.vocab_size, shape.d_model)
        self.pos_emb = nn.Embedding(shape.seq_len, shape.d_model)
        self.drop = nn.Dropout(shape.dropout)
        self.embed = HookPoint()
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.n_layer))
        self.ln_f = nn.LayerNorm(shape.d_model)
        self.head = nn.Linear(shape.d_model, shape.vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the stream's variance flat in depth.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.out.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * shape.n_layer))
        self.name_hook_points()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, tokens: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V), or (B, V) at the last position when `last_only` (the answer slot:
        skipping the other positions' head saves work in training and evaluation)."""
        T = tokens.shape[1]
        pos = torch.arange(T, device=tokens.device)
        x = self.embed(self.drop(self.tok_emb(tokens) + self.pos_emb(pos)))
        for block in self.blocks:
            x = block(x)
        if last_only:
            x = x[:, -1]
        return self.head(self.ln_f(x))
