"""Frame interpolators for motion smoothness (evaluation.md Sec. 1.5).

VBench predicts the midpoint of two frames with AMT-S (:func:`amt_interpolator`, given its weights). Without
them we use :class:`FlowMidpoint`, a weight-free flow-based interpolator from OpenCV (a proxy: AMT handles
occlusions and large motion better), and :class:`LinearBlend`, the plain average, is a lower bound. Each
takes two ``uint8 [H, W, 3]`` RGB frames and returns the ``uint8`` frame halfway between them.
"""

from __future__ import annotations

import numpy as np

from miga.errors import MigaError


def import_cv2():
    """OpenCV, or a one-line :class:`MigaError` that says how to install it."""
    try:
        import cv2
    except ImportError:
        raise MigaError('the VBench metrics need OpenCV; install it with pip install ".[eval]" in the miga checkout') from None
    return cv2


def _round(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class LinearBlend:
    """``(a + b) / 2`` rounded: no motion model at all (a lower bound for M.S.)."""

    name = "linear blend"
    proxy = True

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _round((a.astype(np.float32) + b.astype(np.float32)) / 2.0)


class FlowMidpoint:
    """Symmetric flow-based midpoint interpolation with OpenCV's DIS optical flow (no weights; a proxy for AMT-S).

    Dense flow ``F01`` (``a`` to ``b``) and ``F10`` (``b`` to ``a``) are computed on the grey frames with
    ``cv2.DISOpticalFlow`` (preset ``MEDIUM``). The flow from the middle frame to each end is approximated
    from them linearly (Jiang et al., Super SloMo, Eq. 4, at t = 1/2): ``F_m0 = (F10 - F01) / 4`` and
    ``F_m1 = (F01 - F10) / 4``. Both frames are warped backwards to the middle with ``cv2.remap`` (bilinear,
    replicated border) and averaged. A uniform translation by ``d`` gives ``F_m0 = -d/2``, as it should.
    """

    name = "OpenCV DIS-flow midpoint (proxy for AMT-S)"
    proxy = True

    def __init__(self, preset: str = "MEDIUM"):
        self._cv2 = import_cv2()
        self._dis = self._cv2.DISOpticalFlow_create(getattr(self._cv2, f"DISOPTICAL_FLOW_PRESET_{preset}"))

    def flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Dense flow ``[H, W, 2]`` (x, y) from RGB frame ``a`` to ``b``."""
        cv2 = self._cv2
        ga = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
        gb = cv2.cvtColor(np.ascontiguousarray(b), cv2.COLOR_RGB2GRAY)
        return self._dis.calc(ga, gb, None)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        f01, f10 = self.flow(a, b), self.flow(b, a)
        fm0, fm1 = 0.25 * (f10 - f01), 0.25 * (f01 - f10)
        h, w = a.shape[:2]
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)

        def warp(img, f):
            return cv2.remap(np.ascontiguousarray(img), x + f[..., 0], y + f[..., 1], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE).astype(np.float32)

        return _round((warp(a, fm0) + warp(b, fm1)) / 2.0)


def amt_interpolator(path: str, device: str = "cpu"):
    """AMT-S (VBench's interpolator) with the weights in ``path`` (``amt-s.pth``); see :mod:`miga.evaluation.amt`.
    A one-line :class:`MigaError` if the file is missing or does not hold AMT-S weights."""
    from miga.evaluation.amt import amt_interpolator as load

    return load(path, device)
