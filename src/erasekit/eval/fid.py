"""FID with an Inception-v3 feature extractor from a LOCAL TorchScript file.

No Inception weights ship with erasekit, and torchmetrics / clean-fid / pytorch-fid
would pull torchvision (and another torch build), so FID reads the standard
TorchScript export used by StyleGAN2-ADA/StyleGAN3 and clean-fid
(``inception-2015-12-05.pt``): called as ``model(x, return_features=True)`` on a
uint8-valued float tensor (N, 3, H, W), it resizes internally and returns (N, 2048)
pool features.  Give the file with ``--inception PATH`` or ``ERASEKIT_INCEPTION``;
without it FID is "not available offline" and `InceptionUnavailableError` says so
in one line.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .detectors.base import DetectorUnavailableError
from .metrics import frechet_distance

INCEPTION_ENV = "ERASEKIT_INCEPTION"


class InceptionUnavailableError(DetectorUnavailableError):
    """No usable Inception file; one line for the user."""


def inception_path(path: str | Path | None = None) -> Path:
    value = path or os.environ.get(INCEPTION_ENV)
    if not value:
        raise InceptionUnavailableError(
            f"FID is not available offline: put the TorchScript Inception file inception-2015-12-05.pt "
            f"somewhere local and pass --inception PATH or set {INCEPTION_ENV}=PATH")
    p = Path(value).expanduser()
    if not p.is_file():
        raise InceptionUnavailableError(f"Inception file {p} not found: put inception-2015-12-05.pt (TorchScript) there")
    return p


def load_inception(path: str | Path | None = None, device: str = "cpu"):
    p = inception_path(path)
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format the file ships in
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(p), map_location=device).eval()
    except (RuntimeError, ValueError) as err:
        raise InceptionUnavailableError(f"{p} is not a TorchScript Inception model ({str(err).splitlines()[0][:100]})") from None


@torch.no_grad()
def inception_features(model, images, batch_size: int = 32) -> np.ndarray:
    """(N, D) features of PIL images (uint8 values, NCHW float tensor in)."""
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images[i:i + batch_size]]))
        out.append(model(x.permute(0, 3, 1, 2).float(), return_features=True).double().cpu())
    return torch.cat(out).numpy()


def fid(images_a, images_b, model) -> float:
    """FID between two image sets with a loaded Inception ``model``."""
    return frechet_distance(inception_features(model, images_a), inception_features(model, images_b))
