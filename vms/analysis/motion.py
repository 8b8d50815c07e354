"""Motion on a downscaled luma picture: running-average background, threshold, dilate, contours.

About 150 µs per analysed frame at 320x180. A change over most of the picture at once is light
(lamps, clouds, IR switching), not motion: the background is relearned from that frame and no
motion is reported for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

from vms.analysis.checks import scratch
from vms.analysis.config import MotionConfig

_KERNEL = np.ones((3, 3), np.uint8)


@dataclass(frozen=True, slots=True)
class MotionResult:
    ratio: float  # share of the picture in motion, 0..1
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # x, y, w, h in picture pixels
    recalibrated: bool = False


class MotionDetector:
    """Per-camera background model; feed analysis pictures in time order."""

    def __init__(self, cfg: MotionConfig) -> None:
        self.cfg = cfg
        self.background: npt.NDArray[np.float32] | None = None

    def step(self, g: npt.NDArray[np.uint8]) -> MotionResult:
        # Temporaries in the worker's scratch arrays (see vms.analysis.checks.scratch): no page faults.
        smooth = cv2.GaussianBlur(g, (5, 5), 0, dst=scratch("a", g.shape, np.uint8))
        bg = self.background
        if bg is None or bg.shape != smooth.shape:
            self.background = smooth.astype(np.float32)
            return MotionResult(0.0, recalibrated=True)
        diff = scratch("b", g.shape, np.uint8)
        cv2.absdiff(smooth, cv2.convertScaleAbs(bg, dst=diff), dst=diff)
        _, mask = cv2.threshold(diff, self.cfg.threshold, 255, cv2.THRESH_BINARY, dst=diff)
        changed = cv2.countNonZero(mask) / mask.size
        if changed >= self.cfg.recalibrate_share:
            self.background = smooth.astype(np.float32)
            return MotionResult(0.0, recalibrated=True)
        cv2.accumulateWeighted(smooth, bg, self.cfg.alpha)
        if changed == 0:
            return MotionResult(0.0)
        mask = cv2.dilate(mask, _KERNEL, dst=smooth, iterations=2)  # smooth is done with
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        min_area = self.cfg.min_area * mask.size
        boxes: list[tuple[int, int, int, int]] = []
        area = 0.0
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            if w * h >= min_area:
                boxes.append((x, y, w, h))
                area += cv2.contourArea(c)
        return MotionResult(min(1.0, area / mask.size), boxes)
