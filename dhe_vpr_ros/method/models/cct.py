# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""CCT-14/7x2 (Compact Convolutional Transformer) truncated to its first blocks.

Module and parameter names follow SHI-Labs' implementation (``tokenizer.conv_layers.*``,
``classifier.positional_emb``, ``classifier.blocks.N.*``, ``classifier.norm``), so an
ImageNet or DHE-VPR checkpoint loads by stripping a prefix. At 384x384 input the tokenizer
yields a 24x24 grid of 384-d tokens (stride 16).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Tokenizer(nn.Module):
    """Two conv(7x7, s2) + ReLU + maxpool(3, s2) stages: 384x384x3 -> 576 tokens of 384."""

    def __init__(self, embedding_dim: int = 384, hidden: int = 64):
        super().__init__()
        channels = [3, hidden, embedding_dim]
        self.conv_layers = nn.Sequential(*[
            nn.Sequential(
                nn.Conv2d(channels[i], channels[i + 1], kernel_size=7, stride=2, padding=3, bias=False),
                nn.ReLU(),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
            for i in range(2)
        ])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/16, W/16)."""
        return self.conv_layers(images)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class EncoderBlock(nn.Module):
    """CCT's block: pre-norm attention, then a post-norm feed-forward (as SHI-Labs wrote it)."""

    def __init__(self, dim: int, num_heads: int, ff_dim: int):
        super().__init__()
        self.pre_norm = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads)
        self.linear1 = nn.Linear(dim, ff_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.linear2 = nn.Linear(ff_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.pre_norm(x))
        x = self.norm1(x)
        return x + self.linear2(F.gelu(self.linear1(x)))


class TokenEncoder(nn.Module):
    """Positional embedding + the kept transformer blocks + final LayerNorm."""

    def __init__(self, sequence_length: int, dim: int, num_blocks: int, num_heads: int, ff_dim: int):
        super().__init__()
        self.positional_emb = nn.Parameter(torch.zeros(1, sequence_length, dim))
        nn.init.trunc_normal_(self.positional_emb, std=0.2)
        self.blocks = nn.ModuleList([EncoderBlock(dim, num_heads, ff_dim) for _ in range(num_blocks)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens + self.positional_emb
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class CCT(nn.Module):
    """CCT-14/7x2 at a fixed square input size, keeping ``num_blocks`` of its 14 blocks."""

    def __init__(self, input_size: int = 384, num_blocks: int = 8, dim: int = 384,
                 num_heads: int = 6, mlp_ratio: float = 3.0):
        super().__init__()
        self.grid = input_size // 16
        self.tokenizer = Tokenizer(dim)
        self.classifier = TokenEncoder(self.grid * self.grid, dim, num_blocks, num_heads, int(dim * mlp_ratio))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> dense grid (B, 384, S/16, S/16), not normalised."""
        grid = self.tokenizer(images)
        b, c, h, w = grid.shape
        tokens = self.classifier(grid.flatten(2).transpose(1, 2))
        return tokens.transpose(1, 2).reshape(b, c, h, w)
