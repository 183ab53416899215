"""The lab's WRN in PyTorch (channels-first), for the benchmarks' reference loops only.

Imported only under `--torch`; torch is never a jkd dependency. `forward` returns
`(logits, [stage1, stage2, stage3])` like `jkd.models`' WRN.
"""

import torch
from torch import nn


class _Block(nn.Module):
  def __init__(self, conv, bn, cin, cout, stride, projection):
    super().__init__()
    self.bn1, self.bn2 = bn(cin), bn(cout)
    self.conv1 = conv(cin, cout, 3, stride, 1, bias=False)
    self.conv2 = conv(cout, cout, 3, 1, 1, bias=False)
    self.proj = conv(cin, cout, 1, stride, 0, bias=False) if projection else None

  def forward(self, x):
    h = torch.relu(self.bn1(x))
    out = self.conv2(torch.relu(self.bn2(self.conv1(h))))
    return out + (self.proj(h) if self.proj is not None else x)


class WRN(nn.Module):
  """`wrn{depth}_{widen}` with the reference's blocks (pre-activated projection shortcut)."""

  def __init__(self, name: str, in_channels: int, num_classes: int, ndim: int = 1):
    super().__init__()
    depth, widen = (int(v) for v in name[3:].split("_"))
    conv, bn = (nn.Conv1d, nn.BatchNorm1d) if ndim == 1 else (nn.Conv2d, nn.BatchNorm2d)
    self.stem, cin, stages = conv(in_channels, 16, 3, 1, 1, bias=False), 16, []
    for width, stride in zip((16 * widen, 32 * widen, 64 * widen), (1, 2, 2)):
      blocks = []
      for i in range((depth - 4) // 6):
        blocks.append(_Block(conv, bn, cin, width, stride if i == 0 else 1,
                             i == 0 and (stride != 1 or width != cin)))
        cin = width
      stages.append(nn.Sequential(*blocks))
    self.stages, self.bn, self.fc = nn.ModuleList(stages), bn(cin), nn.Linear(cin, num_classes)

  def forward(self, x):
    x, feats = self.stem(x), []
    for stage in self.stages:
      x = stage(x)
      feats.append(x)
    return self.fc(torch.relu(self.bn(x)).flatten(2).mean(-1)), feats


def pick_device(choice: str) -> torch.device:
  """'auto': the GPU when PyTorch sees one (jax then runs there too), else the CPU."""
  if choice == "auto":
    choice = "cuda" if torch.cuda.is_available() else "cpu"
  return torch.device(choice)


def synchronize(device: torch.device) -> None:
  """Wait for queued GPU work, so a wall-clock timing covers it."""
  if device.type == "cuda":
    torch.cuda.synchronize(device)
