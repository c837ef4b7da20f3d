"""The FID Inception-v3 (TF graph of 2015-12-05), written here with the parameter names of
``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's port), so that file loads strictly from a local path.

The network returns what ADM's evaluator reads off the TF graph:

- ``pool``: ``pool_3:0``, the 2048-d global average pool (FID, Precision/Recall);
- ``spatial``: ``mixed_6/conv:0[..., :7]``, the first 7 channels of the 1×1 branch of the seventh mixed block
  (``Mixed_6d.branch1x1`` after its ReLU; 17×17 at 299 px), flattened in NHWC order to 2023 values (sFID);
- ``logits``: ``pool @ W`` with the 1008-way classifier's weight and, as ADM's ``_create_softmax_graph``,
  no bias (Inception Score).

Input is uint8-valued NHWC (or NCHW) images of any size. As in the TF graph, they are first resized to 299×299
with TF1's ``ResizeBilinear`` (``align_corners=False``, no half-pixel centres: source = dest · in/out), then
mapped by ``(x - 128) / 128``. pytorch-fid instead resizes with ``F.interpolate(bilinear, align_corners=False)``
(half-pixel centres) and normalises by ``2x/255 - 1``; torch-fidelity implements the TF1 resize, as here.
The TF1 max/avg pools used by the FID variants of blocks A, C and E (``count_include_pad=False``, max pool in
the last block) follow pytorch-fid's port.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INCEPTION_ENV = "DITLAB_INCEPTION"
WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
RESIZE = 299
NUM_LOGITS = 1008  # the 2015 graph's classifier: 1000 ImageNet classes + 8 unused
SPATIAL_CHANNELS = 7  # ADM's sFID: mixed_6/conv[..., :7]


class BasicConv2d(nn.Module):
    """conv (no bias) → BatchNorm (eps 1e-3, as the TF graph) → ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    # TF's SAME average pool divides by the in-image count at borders.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d (TF ``mixed``, ``mixed_1``, ``mixed_2``)."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """Mixed_6a (TF ``mixed_3``): grid reduction 35 → 17."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """Mixed_6b..6e (TF ``mixed_4``..``mixed_7``): factorised 7×7 convolutions."""

    def __init__(self, cin: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """Mixed_7a (TF ``mixed_8``): grid reduction 17 → 8."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """Mixed_7b/7c (TF ``mixed_9``, ``mixed_10``); the last one pools with max, as the TF graph."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


def resize_bilinear_tf1(x: Tensor, size: int) -> Tensor:
    """TF1 ``ResizeBilinear(align_corners=False)``: source coordinate = dest · (in / out), no half-pixel
    offset, neighbours clamped at the far edge. x: (N, C, H, W) float."""
    def weights(n_in: int) -> tuple[Tensor, Tensor, Tensor]:
        src = torch.arange(size, dtype=torch.float64, device=x.device) * (n_in / size)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (src - lo).to(x.dtype)

    h_lo, h_hi, h_w = weights(x.shape[-2])
    w_lo, w_hi, w_w = weights(x.shape[-1])
    rows = x[..., h_lo, :] + (x[..., h_hi, :] - x[..., h_lo, :]) * h_w[:, None]
    return rows[..., w_lo] + (rows[..., w_hi] - rows[..., w_lo]) * w_w


class FIDInceptionV3(nn.Module):
    """Inception-v3 as in the FID graph; ``forward`` returns ``{"pool", "spatial", "logits"}``.

    State-dict keys equal ``pt_inception-2015-12-05-6726825d.pth`` (torchvision Inception3 naming without
    AuxLogits, ``fc`` with 1008 outputs).
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, NUM_LOGITS)

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8-valued images (N, H, W, 3) or (N, 3, H, W) -> (N, 3, 299, 299) in [-1, 1) as the TF graph."""
        x = images.permute(0, 3, 1, 2) if images.shape[-1] == 3 and images.shape[1] != 3 else images
        x = x.to(self.fc.weight.dtype)
        if x.shape[-2:] != (RESIZE, RESIZE):
            x = resize_bilinear_tf1(x, RESIZE)
        return (x - 128.0) / 128.0

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = self.preprocess(images)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))
        spatial = self.Mixed_6d.branch1x1(x)[:, :SPATIAL_CHANNELS]  # TF mixed_6/conv:0
        x = self.Mixed_6e(self.Mixed_6d(x))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        pool = x.mean(dim=(2, 3))  # pool_3: 8×8 average
        return {
            "pool": pool,
            "spatial": spatial.permute(0, 2, 3, 1).flatten(1),  # NHWC order, as ADM's reshape
            "logits": pool @ self.fc.weight.t(),  # ADM multiplies by W only (softmax/logits/MatMul)
        }


def inception_weights_path(path: str | os.PathLike | None = None) -> Path:
    """The weight file from ``path`` or ``$DITLAB_INCEPTION``; missing is a clear error (never downloaded)."""
    chosen = path or os.environ.get(INCEPTION_ENV)
    if not chosen:
        raise FileNotFoundError(
            f"no Inception weights given: pass --inception PATH or set {INCEPTION_ENV} to a local copy of "
            f"{WEIGHTS_NAME} (pytorch-fid's release); ditlab never downloads it"
        )
    chosen = Path(chosen).expanduser()
    if not chosen.is_file():
        raise FileNotFoundError(f"Inception weights {chosen} do not exist (expected {WEIGHTS_NAME})")
    return chosen


def load_fid_inception(path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> FIDInceptionV3:
    """The FID Inception with the published weights loaded strictly (``num_batches_tracked`` may be absent)."""
    file = inception_weights_path(path)
    state = torch.load(file, map_location="cpu", weights_only=True)
    model = FIDInceptionV3()
    expected = model.state_dict()
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{file} is not the FID Inception ({WEIGHTS_NAME}): missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]} ({len(missing)} / {len(unexpected)} keys)")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
