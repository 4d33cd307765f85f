"""Multi-scale projector: ViT maps -> ``hidden_dim`` pyramid levels (P3 / P4 / P5, optional P6).

Every tapped ViT map (stride = patch size, the "P4" grid) is resampled separately for each level
(P3: 2x transposed conv to half the channels; P4: identity; P5: stride-2 conv), the resampled maps
are concatenated along channels and fused by a C2f block followed by a channel LayerNorm. P6, if
asked for, is a parameter-free stride-2 subsampling of the previous level.

The conv+norm unit's norm is called ``bn`` (a checkpoint name) although it is a channel LayerNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rfdetr.config import LEVEL_SCALE


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``[B, C, H, W]`` maps: ``(x - mean_c) / sqrt(var_c + eps) * w + b``."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centered = x - x.mean(1, keepdim=True)
        variance = centered.pow(2).mean(1, keepdim=True)
        normalised = centered / torch.sqrt(variance + self.eps)
        return self.weight[:, None, None] * normalised + self.bias[:, None, None]


class ConvNormAct(nn.Module):
    """Conv (no bias, 'same' padding) -> channel LayerNorm -> activation."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
                 activation: type[nn.Module] = nn.ReLU):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False)
        self.bn = ChannelLayerNorm(out_channels)
        self.act = activation(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 conv units, no residual (the projector's C2f disables shortcuts)."""

    def __init__(self, channels: int):
        super().__init__()
        self.cv1 = ConvNormAct(channels, channels, 3, activation=nn.SiLU)
        self.cv2 = ConvNormAct(channels, channels, 3, activation=nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(x))


class C2f(nn.Module):
    """CSP block: 1x1 conv into two halves, a chain of bottlenecks on the second, 1x1 conv over all pieces."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3):
        super().__init__()
        self.hidden = out_channels // 2
        self.cv1 = ConvNormAct(in_channels, 2 * self.hidden, 1, activation=nn.SiLU)
        self.cv2 = ConvNormAct((2 + num_blocks) * self.hidden, out_channels, 1, activation=nn.SiLU)
        self.m = nn.ModuleList(Bottleneck(self.hidden) for _ in range(num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = list(self.cv1(x).split((self.hidden, self.hidden), dim=1))
        for block in self.m:
            pieces.append(block(pieces[-1]))
        return self.cv2(torch.cat(pieces, dim=1))


def _resampler(scale: float, channels: int) -> nn.Sequential:
    if scale == 2.0:
        return nn.Sequential(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
    if scale == 1.0:
        return nn.Sequential()
    if scale == 0.5:
        return nn.Sequential(ConvNormAct(channels, channels, 3, stride=2))
    raise ValueError(f"unsupported projector scale {scale}")


class MultiScaleProjector(nn.Module):
    """``N`` maps ``[B, in_channels, h, w]`` -> one ``[B, out_channels, h*s, w*s]`` map per level."""

    def __init__(self, in_channels: int, num_inputs: int, out_channels: int, levels: list[str]):
        super().__init__()
        self.extra_pool = levels[-1] == "P6"
        scales = [LEVEL_SCALE[level] for level in levels if level != "P6"]
        self.stages_sampling = nn.ModuleList()
        self.stages = nn.ModuleList()
        for scale in scales:
            self.stages_sampling.append(nn.ModuleList(_resampler(scale, in_channels) for _ in range(num_inputs)))
            fused_channels = num_inputs * (in_channels // 2 if scale == 2.0 else in_channels)
            self.stages.append(nn.Sequential(C2f(fused_channels, out_channels), ChannelLayerNorm(out_channels)))

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        levels = []
        for samplers, stage in zip(self.stages_sampling, self.stages):
            resampled = [sampler(feature) for sampler, feature in zip(samplers, features)]
            fused = resampled[0] if len(resampled) == 1 else torch.cat(resampled, dim=1)
            levels.append(stage(fused))
        if self.extra_pool:
            levels.append(F.max_pool2d(levels[-1], kernel_size=1, stride=2))
        return levels
