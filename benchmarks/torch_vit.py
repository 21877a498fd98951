"""A PyTorch twin of minivit's ViT, with timm's module names and layouts.

Used only by the optional parity tests and the benchmarks (never by the
package): ``TorchViT(**model.config)`` then
``load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})``
gives the same function as the minivit model.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim, heads, attn_dropout=0.0, proj_dropout=0.0, qkv_bias=True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = attn_dropout
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, T, D)))


class Mlp(nn.Module):
    def __init__(self, dim, hidden, dropout=0.0, gelu="tanh"):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)
        self.approximate = "tanh" if gelu == "tanh" else "none"

    def forward(self, x):
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x), approximate=self.approximate))))


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_dim, dropout=0.0, attn_dropout=0.0, eps=1e-6,
                 qkv_bias=True, gelu="tanh"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, attn_dropout, dropout, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim, dropout, gelu)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, in_channels, dim, patch_size, stride):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=stride)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)          # (B, N, D)


class TorchViT(nn.Module):
    def __init__(self, image_size=28, patch_size=7, in_channels=1, num_classes=10, dim=64,
                 depth=6, heads=4, mlp_dim=128, dropout=0.0, attn_dropout=0.0, pool="cls",
                 pos_embed="learned", stride=None, gelu="tanh", norm_eps=1e-6, qkv_bias=True,
                 pre_logits=None, **_ignored):
        super().__init__()
        stride = stride or patch_size
        grid = (image_size - patch_size) // stride + 1
        self.pool = pool
        self.patch_embed = PatchEmbed(in_channels, dim, patch_size, stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim),
                                      requires_grad=pos_embed == "learned")
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim, dropout, attn_dropout,
                                          norm_eps, qkv_bias, gelu)
                                    for _ in range(depth))
        if pool == "avg":
            self.fc_norm = nn.LayerNorm(dim, eps=norm_eps)    # timm: norm after pooling
        else:
            self.norm = nn.LayerNorm(dim, eps=norm_eps)
        if pre_logits:
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module("fc", nn.Linear(dim, pre_logits))
            self.pre_logits.add_module("act", nn.Tanh())
        self.head = nn.Linear(pre_logits or dim, num_classes)

    def forward(self, x):
        t = self.patch_embed(x)
        z = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), t), dim=1) + self.pos_embed
        z = self.pos_drop(z)
        for block in self.blocks:
            z = block(z)
        if self.pool == "avg":
            pooled = self.fc_norm(z[:, 1:].mean(dim=1))
        else:
            z = self.norm(z)
            pooled = z[:, 0] if self.pool == "cls" else z[:, 1:].mean(dim=1)
        if hasattr(self, "pre_logits"):
            pooled = self.pre_logits(pooled)
        return self.head(pooled)


def from_minivit(model, dtype=torch.float32):
    """Build the twin of a minivit ViT and copy its weights (no name map needed)."""
    return from_state_dict(model.config, model.state_dict(), dtype)


def from_state_dict(config, state, dtype=torch.float32):
    """The twin of ``ViT(**config)`` holding ``state`` (minivit's ``state_dict``:
    NumPy arrays under timm's names)."""
    twin = TorchViT(**config).to(dtype)
    twin.load_state_dict({k: torch.from_numpy(v).to(dtype) for k, v in state.items()})
    return twin


