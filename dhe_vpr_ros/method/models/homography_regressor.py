# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The DHE regressor: correlation volume -> transformer -> 4 point pairs -> homography.

Layout follows the authors' network so their checkpoints load unchanged: the correlation of
query positions (channels, column-major order) with candidate positions (tokens, row-major),
a learned positional embedding ``pe``, ``encoder`` (L layers) then ``encoder2`` (L layers,
with a residual around it), all stock ``nn.TransformerEncoderLayer`` (post-norm, GELU, no
dropout), and ``linear`` to 16 numbers: 4 query points then 4 candidate points, in pixels of
the network's input frame.

Cost grows with the fourth power of the grid side (tokens x width), so the grid, depth and
feed-forward width are configuration; the features are average-pooled to the regressor's grid.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import homography_from_four_points


@dataclass(frozen=True)
class RegressorConfig:
    grid: int = 24  # correlation grid side; token width and count are grid**2
    heads: int = 12
    ff_dim: int = 2048
    layers: int = 3  # first encoder
    residual_layers: int = 3  # second encoder, with a residual connection around it
    frame_size: int = 384  # pixel frame the predicted points live in

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> "RegressorConfig":
        """A config from a checkpoint, checked against sane bounds before anything is built
        (a crafted ``layers: 1e9`` must not allocate without end); ValueError naming the field."""
        if not isinstance(data, dict):
            raise ValueError(f"regressor config is {type(data).__name__}, not an object")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"regressor config has unknown fields {unknown}")
        values = {**asdict(cls()), **data}
        for name, (low, high) in CONFIG_BOUNDS.items():
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"regressor config field {name!r} is {value!r}, not an integer in [{low}, {high}]")
        config = cls(**values)
        if (config.grid * config.grid) % config.heads:
            raise ValueError(f"regressor config: token width {config.grid ** 2} is not divisible by "
                             f"{config.heads} heads")
        return config

    def gflop_per_pair(self) -> float:
        """Multiply-adds x 2 of one forward pass for one pair (correlation excluded)."""
        n = self.grid * self.grid  # tokens and token width
        per_layer = n * (4 * n * n + 2 * n * self.ff_dim) + 2 * n * n * n
        return 2 * ((self.layers + self.residual_layers) * per_layer + n * n * 16) / 1e9


# What a checkpoint may ask for: the paper preset is grid 24, 6 layers, ff 2048.
CONFIG_BOUNDS = {"grid": (2, 48), "heads": (1, 64), "ff_dim": (1, 16384), "layers": (0, 24),
                 "residual_layers": (0, 24), "frame_size": (32, 4096)}

PRESETS: dict[str, RegressorConfig] = {
    # The paper's regressor (about 30 GFLOP per pair): for GPUs.
    "paper": RegressorConfig(grid=24, heads=12, ff_dim=2048, layers=3, residual_layers=3),
    # Sized for a 2-core CPU: 144 tokens of width 144, 2 + 1 layers (0.18 GFLOP per pair;
    # K=32 re-ranking with refinement stays under 150 ms). Until 0.2 it had 1 + 1 layers;
    # checkpoints record their config, so those still load as they were trained.
    "light": RegressorConfig(grid=12, heads=4, ff_dim=288, layers=2, residual_layers=1),
}


def correlation_volume(query: torch.Tensor, candidates: torch.Tensor, grid: int) -> torch.Tensor:
    """Correlation between a query grid and K candidate grids, in the authors' layout.

    query: (C, H, W) or (K, C, H, W); candidates: (K, C, H, W), L2-normalised along C.
    Returns (K, N, N) with N = grid**2: [k, i, j] = ReLU(<q_i, c_j>) normalised over i, where i
    runs over query positions column-major and j over candidate positions row-major.
    """
    if query.dim() == 3:
        query = query.unsqueeze(0)
    if query.shape[-1] != grid or query.shape[-2] != grid:
        query = F.normalize(F.adaptive_avg_pool2d(query, grid), dim=-3)
        candidates = F.normalize(F.adaptive_avg_pool2d(candidates, grid), dim=-3)
    q = query.transpose(-1, -2).flatten(-2)  # (K|1, C, N) column-major positions
    c = candidates.flatten(-2)  # (K, C, N) row-major positions
    corr = torch.matmul(q.transpose(-1, -2), c)  # (K, N_q, N_c)
    return F.normalize(F.relu(corr), dim=-2)


class HomographyRegressor(nn.Module):
    def __init__(self, config: RegressorConfig = PRESETS["paper"]):
        super().__init__()
        self.config = config
        width = config.grid * config.grid
        if width % config.heads:
            raise ValueError(f"token width {width} is not divisible by {config.heads} heads")

        def encoder(num_layers: int) -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(d_model=width, nhead=config.heads,
                                               dim_feedforward=config.ff_dim, dropout=0.0,
                                               activation="gelu", batch_first=True)
            return nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)

        self.encoder = encoder(config.layers)
        self.encoder2 = encoder(config.residual_layers)
        self.pe = nn.Parameter(torch.zeros(1, width, width))
        self.linear = nn.Linear(width * width, 16)
        # Start from the identity: both point sets at the same square inside the frame, so an
        # untrained regressor already gives a valid homography and training starts stable.
        s = config.frame_size
        square = torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]) * s
        nn.init.normal_(self.linear.weight, std=1e-4)
        with torch.no_grad():
            self.linear.bias.copy_(torch.cat([square, square]).flatten())

    def forward(self, correlation: torch.Tensor) -> torch.Tensor:
        """(K, N, N) correlation -> (K, 8, 2) points: 4 in the query, then 4 in the candidate."""
        x = (correlation + self.pe).transpose(1, 2)  # tokens = candidate positions
        x = self.encoder(x)
        x = x + self.encoder2(x)
        points = self.linear(x.transpose(1, 2).flatten(1))
        return points.reshape(-1, 8, 2)

    def cpu_chunk(self) -> int:
        """Pairs per pass on a CPU: a batch of the paper preset's activations falls out of
        cache (measured: K=32 in one batch 9.2 s, in chunks of 2 6.9 s); the light preset's
        are 16x smaller and run fastest about 8 at a time (measured 42 ms against 53 for 32)."""
        return 2 if self.config.grid >= 24 else 8

    def homographies(self, query: torch.Tensor, candidates: torch.Tensor,
                     chunk_size: int | None = None) -> torch.Tensor:
        """Feature grids -> (K, 3, 3) homographies mapping query pixels to candidate pixels.

        ``chunk_size`` bounds how many pairs go through the transformer at once: all K on a
        GPU (None), a few on a CPU, where a whole batch of the paper preset's activations
        falls out of cache and runs slower than small batches (measured: K=32 in one batch
        9.2 s, in chunks of 2 6.9 s on a 2-core CPU).
        """
        corr = correlation_volume(query, candidates, self.config.grid)
        if chunk_size is None or chunk_size >= corr.shape[0]:
            points = self(corr)
        else:
            points = torch.cat([self(part) for part in corr.split(chunk_size)])
        # The DLT runs in float32 even under autocast: it is tiny and ill-conditioned in bf16.
        points = points.float()
        return homography_from_four_points(points[:, :4], points[:, 4:])
