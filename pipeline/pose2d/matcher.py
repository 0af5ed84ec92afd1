"""VLPose's vision-language relation matcher: image tokens attend to themselves and to the prompt.

VLPose (Li et al., 2024, https://arxiv.org/abs/2402.14456) lets the patch tokens ``E`` of the
pose backbone read the domain prompt: the prompt's embedding becomes ``M`` tokens ``T`` in the
backbone's width, and one multi-head attention layer takes its queries from the image only and
its keys and values from image *and* text::

    Q = E·Wq      K = [E; T]·Wk      V = [E; T]·Wv
    R = LayerNorm(E + Proj(softmax(Q·Kᵀ/√d)·V))

``R`` keeps ``E``'s shape, so it feeds a twin of the original decoder (:mod:`pipeline.pose2d.model`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RelationMatcher"]


class RelationMatcher(nn.Module):
    """Cross-modal attention from image tokens to ``[image; text]`` tokens, with residual and norm.

    Args:
        hidden_size: width ``D`` of the image tokens.
        text_dim: size of the prompt embedding (384 for all-MiniLM-L6-v2).
        num_heads: attention heads (``D`` must divide by it).
        num_text_tokens: ``M``, the tokens one prompt embedding is projected into.
        dropout: attention dropout while training.
    """

    def __init__(self, hidden_size: int, text_dim: int, num_heads: int, num_text_tokens: int, dropout: float = 0.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
        self.num_heads, self.num_text_tokens, self.dropout = num_heads, num_text_tokens, dropout
        self.text_proj = nn.Linear(text_dim, num_text_tokens * hidden_size)
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)

    def text_tokens(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """``(B, text_dim)`` prompt embeddings → ``(B, M, D)`` tokens ``T``."""
        return self.text_proj(text_embeds).view(text_embeds.shape[0], self.num_text_tokens, -1)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, tokens: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """``R`` ``(B, N, D)`` from image tokens ``E`` ``(B, N, D)`` and prompt embeddings ``(B, text_dim)``."""
        context = torch.cat([tokens, self.text_tokens(text_embeds)], dim=1)
        q, k, v = self._heads(self.query(tokens)), self._heads(self.key(context)), self._heads(self.value(context))
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        attended = attended.transpose(1, 2).reshape(tokens.shape)
        return self.norm(tokens + self.proj(attended))
