"""One camera's analysis state: verdicts per keyframe, hysteresis, the learned view, motion.

A defect is raised after ``raise_after`` consecutive bad samples and cleared after
``clear_after`` good ones, so one odd keyframe (a truck in front of the lens, a flash) never
flaps an alert. A check masked by a stronger defect in the same sample (see
:data:`vms.analysis.config.CHECKS`) gives no verdict: its counters hold.

Memory per camera: the last two keyframes' pictures (57 KB each at 320x180), block grids of the
learned view, a 96x54 thumbnail and the motion background (230 KB): well under 1 MB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vms.analysis import checks as C
from vms.analysis.config import CHECKS, AnalysisConfig, CheckName
from vms.analysis.motion import MotionDetector


@dataclass(slots=True)
class Picture:
    """A decoded picture reduced to what the checks read."""

    t: float  # media time, Unix seconds
    gray: npt.NDArray[np.uint8]  # the analysis picture (see checks.analysis_picture)
    u_mean: float = 128.0
    v_mean: float = 128.0


@dataclass(frozen=True, slots=True)
class Change:
    check: CheckName
    raised: bool
    at: float
    value: float | None


@dataclass(slots=True)
class _Run:
    bad: int = 0
    good: int = 0
    raised: bool = False
    since: float = 0.0


@dataclass
class _Reference:
    """The camera's normal view, learned from samples with no defect."""

    n: int = 0
    thumb: npt.NDArray[np.float32] | None = None
    means: npt.NDArray[np.float32] | None = None
    stds: npt.NDArray[np.float32] | None = None

    def learn(
        self, thumb: npt.NDArray[np.float32], means: npt.NDArray[np.float32], stds: npt.NDArray[np.float32]
    ) -> None:
        if self.thumb is None or self.means is None or self.stds is None or self.thumb.shape != thumb.shape:
            self.thumb, self.means, self.stds, self.n = thumb.copy(), means.copy(), stds.copy(), 1
            return
        a = 0.2 if self.n >= 5 else 1.0 / (self.n + 1)  # average the first few, then follow slowly
        self.thumb += a * (thumb - self.thumb)
        self.means += a * (means - self.means)
        self.stds += a * (stds - self.stds)
        self.n += 1


@dataclass
class DeviceAnalyzer:
    cfg: AnalysisConfig
    runs: dict[str, _Run] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    prev: tuple[npt.NDArray[np.uint8], ...] = ()  # the last two keyframes' pictures
    ref: _Reference = field(default_factory=_Reference)
    motion: MotionDetector | None = None

    def __post_init__(self) -> None:
        self.enabled = frozenset(self.cfg.checks)
        self.runs = {c: _Run() for c in CHECKS if c in self.enabled}
        if self.cfg.motion.enabled:
            self.motion = MotionDetector(self.cfg.motion)

    def resume(self, raised: dict[str, float]) -> None:
        """Start with these checks raised (since when): they clear after ``clear_after`` good samples."""
        for check, since in raised.items():
            run = self.runs.get(check)
            if run is not None:
                run.raised, run.since = True, since

    @property
    def raised(self) -> dict[str, float]:
        """Raised checks and since when."""
        return {c: r.since for c, r in self.runs.items() if r.raised}

    # -- verdicts --------------------------------------------------------------------------------
    def verdicts(self, pic: Picture | None) -> dict[CheckName, tuple[bool, float]]:
        """(bad, metric) per check that has a verdict for this sample; updates the learned view."""
        out: dict[CheckName, tuple[bool, float]] = {}
        on = self.enabled
        if pic is None:
            out["signal_loss"] = (True, 1.0)
            return {k: v for k, v in out.items() if k in on}
        out["signal_loss"] = (False, 0.0)
        th = self.cfg.thresholds
        g = pic.gray
        means, stds = C.block_stats(g)
        prev, self.prev = self.prev, (g, *self.prev[:1])
        thumb = C.thumbnail(g)
        ref = self.ref
        # Block by block, how much of the learned view the picture still shows (None: nothing learned yet).
        view = (
            C.block_similarity(thumb, ref.thumb)
            if ref.thumb is not None and ref.n >= 2 and ref.thumb.shape == thumb.shape
            else None
        )
        flat = C.flat_share(stds, th.solid_max_std)
        level = float(np.median(means))
        solid = flat >= th.solid_min_share
        # A night view turned much too dark is as flat as a black screen but still shows its layout.
        dark_view = view is not None and float(np.median(view)) >= th.black_max_similarity
        out["black_screen"] = (solid and level <= th.black_max_luma and not dark_view, level)
        out["solid_screen"] = (solid and level > th.black_max_luma, flat)
        if self._any_bad(out) or (solid and not dark_view):
            return self._only(out)
        mean, _ = C.luma_stats(g)
        out["too_dark"] = (mean <= th.dark_max_luma, mean)
        clipped = C.clipped_share(g, th.bright_luma)
        washed_out = mean >= th.bright_mean_luma
        out["too_bright"] = (clipped >= th.bright_min_share or washed_out, clipped)
        if self._any_bad(out):
            return self._only(out)
        if "occlusion" in on:
            ignore = (
                (ref.stds < th.occlusion_flat_std) & (ref.means < th.occlusion_dark_luma)
                if ref.means is not None and ref.stds is not None and ref.means.shape == means.shape
                else np.zeros(means.shape, np.bool_)
            )
            if view is not None and view.shape == ignore.shape:
                ignore |= view >= th.occlusion_max_similarity  # still the normal view: blurred, not covered
            share = C.flat_dark_share(means, stds, th.occlusion_flat_std, th.occlusion_dark_luma, ignore)
            out["occlusion"] = (share >= th.occlusion_min_share, share)
            if share >= th.occlusion_min_share:
                return self._only(out)
        if "blur" in on:
            b = C.blur_score(g)
            out["blur"] = (b >= th.blur_min, b)
        if "color_cast" in on:
            cast = C.cast_ratio(pic.u_mean, pic.v_mean, mean)
            out["color_cast"] = (cast >= th.cast_min_ratio, cast)
        if "snow_noise" in on:
            sigma = C.noise_sigma(g)
            out["snow_noise"] = (sigma >= th.noise_min_sigma, sigma)
        if "stripes" in on:
            amp = C.stripe_amplitude(g)
            out["stripes"] = (amp >= th.stripe_min_amplitude, amp)
        if "frozen" in on and prev:
            # Against the last two: a camera or recorder looping a short buffer repeats too.
            d = min(C.frozen_diff(g, p) for p in prev)
            out["frozen"] = (d <= th.frozen_max_diff, d)
        if self._any_bad(out):
            return self._only(out)
        if view is not None and "scene_change" in on:
            sim = float(np.median(view))
            out["scene_change"] = (sim < th.scene_min_similarity, sim)
            run = self.runs["scene_change"]
            if sim < th.scene_min_similarity:
                if run.bad + 1 >= self.cfg.scene_adopt_after:
                    self.ref = _Reference()  # the camera stays where it was moved: its view is the new normal
                    self.ref.learn(thumb, means, stds)
                return self._only(out)
        self.ref.learn(thumb, means, stds)
        return self._only(out)

    def _only(self, out: dict[CheckName, tuple[bool, float]]) -> dict[CheckName, tuple[bool, float]]:
        return {k: v for k, v in out.items() if k in self.enabled}

    def _any_bad(self, out: dict[CheckName, tuple[bool, float]]) -> bool:
        return any(bad for k, (bad, _) in out.items() if k in self.enabled)

    # -- hysteresis ------------------------------------------------------------------------------
    def feed(self, pic: Picture | None, t: float) -> list[Change]:
        """One keyframe (or None: the segment had no decodable video); returns raised/cleared checks."""
        changes: list[Change] = []
        for check, (bad, value) in self.verdicts(pic).items():
            self.values[check] = value
            run = self.runs[check]
            h = self.cfg.hysteresis_for(check)
            if bad:
                run.bad, run.good = run.bad + 1, 0
                if not run.raised and run.bad >= h.raise_after:
                    run.raised, run.since = True, t
                    changes.append(Change(check, True, t, value))
            else:
                run.good, run.bad = run.good + 1, 0
                if run.raised and run.good >= h.clear_after:
                    run.raised = False
                    changes.append(Change(check, False, t, value))
        return changes
