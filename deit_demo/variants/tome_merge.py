"""Token Merging (ToMe; Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023) for timm's DeiTs.

In every block, between attention and the MLP, the tokens are split alternately into two sets A and B; each token of
A is matched to its most similar token of B (cosine similarity of the attention keys, averaged over heads), and the
`r` most similar pairs are merged by a size-weighted average. Each token remembers how many patches it stands for
(`size`), and attention adds log(size) to its logits ("proportional attention"), so a merged token still weighs as
much as the patches it replaced. The class token and the distillation token are never merged and stay at positions
0 and 1, where timm's heads read them. No retraining: the transform wraps the trained model's own modules.

`r = 0` runs exactly the unmerged computation (the same modules in the same order, no proportional term).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def bipartite_soft_matching(metric: torch.Tensor, r: int, protected: int) -> tuple[torch.Tensor, ...]:
    """Indices for merging `r` tokens: (unmerged A, merged A, their B destinations), each (batch, n, 1).

    `protected` leading tokens (class, distillation) are never merged: token 0 sits in A and token 1 in B, so A's
    first row and B's first column are excluded from the matching.
    """
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    scores = a @ b.transpose(-1, -2)
    if protected >= 1:
        scores[..., 0, :] = -math.inf  # the class token (A's first) is never a source
    if protected >= 2:
        scores[..., :, 0] = -math.inf  # the distillation token (B's first) is never a destination
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unmerged = edge_idx[..., r:, :].sort(dim=-2).values  # keeps the class token first, the rest in order
    merged = edge_idx[..., :r, :]
    destination = node_idx[..., None].gather(dim=-2, index=merged)
    return unmerged, merged, destination


def merge(x: torch.Tensor, unmerged: torch.Tensor, merged: torch.Tensor, destination: torch.Tensor,
          protected: int) -> torch.Tensor:
    """Sum the merged A tokens into their B destinations; order: class, distillation, other A, other B."""
    src, dst = x[..., ::2, :], x[..., 1::2, :]
    n, t1, c = src.shape
    kept = src.gather(dim=-2, index=unmerged.expand(n, unmerged.shape[-2], c))
    moved = src.gather(dim=-2, index=merged.expand(n, merged.shape[-2], c))
    dst = dst.scatter_reduce(-2, destination.expand(n, destination.shape[-2], c), moved, reduce="sum")
    if protected >= 2:  # timm's distilled heads read token 1: put the distillation token (B's first) back there
        return torch.cat([kept[:, :1], dst[:, :1], kept[:, 1:], dst[:, 1:]], dim=1)
    return torch.cat([kept, dst], dim=1)


def attention(attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """timm's `Attention.forward` (eval mode) plus proportional attention (log size added to the logits); also
    returns the keys averaged over heads, ToMe's similarity metric."""
    batch, tokens, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    bias = None if size is None else size.log()[:, None, None, :, 0]  # (batch, 1, 1, tokens)
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    else:
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        out = (logits if bias is None else logits + bias).softmax(dim=-1) @ v
    out = attn.norm(out.transpose(1, 2).reshape(batch, tokens, attn.attn_dim))
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), k.mean(dim=1)


def block_forward(block: nn.Module, x: torch.Tensor, size: torch.Tensor | None, r: int,
                  protected: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One timm Block with ToMe between attention and MLP."""
    r = min(r, (x.shape[1] - protected) // 2)
    if r <= 0 and size is None:
        return block(x), None  # nothing merged so far or here: timm's own forward, bit for bit
    out, metric = attention(block.attn, block.norm1(x), size)
    x = x + block.drop_path1(block.ls1(out))
    if r > 0:
        if size is None:
            size = torch.ones(x.shape[0], x.shape[1], 1, dtype=x.dtype, device=x.device)
        indices = bipartite_soft_matching(metric, r, protected)
        x = merge(x * size, *indices, protected)
        size = merge(size, *indices, protected)
        x = x / size
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, size


class ToMe(nn.Module):
    """A timm DeiT (plain or distilled) with `r` tokens merged in every block; same weights, same outputs' shape."""

    def __init__(self, vit: nn.Module, r: int):
        super().__init__()
        if r < 0:
            raise ValueError("r is the number of tokens merged per block: 0 or more")
        self.vit = vit
        self.r = int(r)
        self.protected = 1 + int(getattr(vit, "dist_token", None) is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        x = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        size = None
        for block in vit.blocks:
            x, size = block_forward(block, x, size, self.r, self.protected)
        return vit.forward_head(vit.norm(x))

    def tokens_per_block(self, tokens: int) -> list[int]:
        """How many tokens each block's MLP sees, for an input of `tokens` (patches plus protected tokens)."""
        counts = []
        for _ in self.vit.blocks:
            tokens -= max(0, min(self.r, (tokens - self.protected) // 2))
            counts.append(tokens)
        return counts
