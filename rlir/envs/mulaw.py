"""Mu-law binning of camera angles, as VPT quantises mouse movement.

Small camera moves are frequent and need fine bins; large ones are rare. Mu-law companding
``c(x) = sign(x) * log(1 + mu*|x|/M) / log(1 + mu) * M`` maps [-M, M] onto itself with a steep slope
near 0, and uniform bins over c(x) give bins that are narrow near 0 and wide near +-M.
VPT (and MineWorld) use M = 10 degrees, 11 bins, mu = 10: the centres are 0, +-0.62, +-1.6, +-3.2, +-5.8, +-10.
Bins are rounded in companded space, exactly as VPT's CameraQuantizer does.
"""
from __future__ import annotations

import numpy as np


class MuLawQuantizer:
    def __init__(self, max_degrees: float = 10.0, bins: int = 11, mu: float = 10.0):
        if not max_degrees > 0:
            raise ValueError(f"max_degrees must be > 0, got {max_degrees}")
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an int >= 2, got {bins!r}")
        if not mu > 0:
            raise ValueError(f"mu must be > 0, got {mu}")
        self.max_degrees = float(max_degrees)
        self.bins = bins
        self.mu = float(mu)
        self._bin_width = 2.0 * self.max_degrees / (bins - 1)  # in companded degrees

    def encode(self, degrees):
        """Degrees (scalar or array) -> bin index in [0, bins); values beyond +-max_degrees clip to the end bins."""
        x = np.clip(np.asarray(degrees, dtype=np.float64), -self.max_degrees, self.max_degrees) / self.max_degrees
        companded = np.sign(x) * np.log1p(self.mu * np.abs(x)) / np.log1p(self.mu) * self.max_degrees
        index = np.rint((companded + self.max_degrees) / self._bin_width).astype(np.int64)
        return int(index) if index.ndim == 0 else index

    def decode(self, index):
        """Bin index (scalar or array) -> the bin centre in degrees."""
        index = np.asarray(index)
        if not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"bin index must be an integer, got dtype {index.dtype}")
        if index.size and (index.min() < 0 or index.max() >= self.bins):
            raise ValueError(f"bin index must be in [0, {self.bins}), got values in [{index.min()}, {index.max()}]")
        y = (index * self._bin_width - self.max_degrees) / self.max_degrees
        degrees = np.sign(y) * ((1.0 + self.mu) ** np.abs(y) - 1.0) / self.mu * self.max_degrees
        return float(degrees) if degrees.ndim == 0 else degrees

    def centres(self) -> np.ndarray:
        """All bin centres in degrees, ascending."""
        return self.decode(np.arange(self.bins))

    def __repr__(self) -> str:
        return f"MuLawQuantizer(max_degrees={self.max_degrees}, bins={self.bins}, mu={self.mu})"
