"""One camera's analysis state: verdicts per keyframe, hysteresis, the learned view and normal, motion.

A defect is raised after ``raise_after`` consecutive bad samples and cleared after
``clear_after`` good ones, so one odd keyframe (a truck in front of the lens, a flash) never
flaps an alert. A check masked by a stronger defect in the same sample (see
:data:`vms.analysis.config.CHECKS`) gives no verdict: its counters hold.

Cameras differ more than any threshold: a lens that is soft by design, a lawn that is green, a
sensor that is grainy at night, a scene where nothing moves. So sharpness, grain, light, colour,
interference and change are judged against what *this* camera shows when healthy (:class:`Normal`):
the median of its first ``learn_samples`` healthy keyframes, then followed slowly (``follow``) by
healthy ones only, so a defect is never learned as normal. Absolute guards remain only where a
value cannot be normal for any camera (black, a blur score no focused lens gives, snow far above
any grain); they are what catches a camera defective at first sight, e.g. installed out of focus,
before it has a normal. The normal is a few numbers: it travels in reports and comes back in
``Work``, so a restarted hub or agent starts from it instead of learning again.

Memory per camera: the last two keyframes' pictures (57 KB each at 320x180), block grids of the
learned view, a 96x54 thumbnail, the normal (a few floats) and the motion background (230 KB):
well under 1 MB.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from vms.analysis import checks as C
from vms.analysis.config import CHECKS, AnalysisConfig, CheckName
from vms.analysis.motion import MotionDetector
from vms.analysis.substream import Stream


@dataclass(slots=True)
class Picture:
    """A decoded picture reduced to what the checks read."""

    t: float  # media time, Unix seconds
    gray: npt.NDArray[np.uint8]  # the analysis picture (see checks.analysis_picture)
    u_mean: float = 128.0
    v_mean: float = 128.0
    #: What the encoder spends between keyframes: :func:`vms.analysis.checks.inter_level` of the inter
    #: (non-key) frames of the GOP this keyframe opens, in bytes; None if unknown.
    inter_bytes: float | None = None
    #: The keyframe's own size in bytes; None if unknown. Far under the camera's normal, the encoder was
    #: starved (a sub stream at its bit-rate cap, drained by snow) and quantised the picture's grain away.
    key_bytes: float | None = None


class Verdict(NamedTuple):
    """One check on one sample: bad or not, the metric, the camera's normal and the limit it was held to."""

    bad: bool
    value: float
    normal: float | None = None
    threshold: float | None = None


@dataclass(frozen=True, slots=True)
class Change:
    check: CheckName
    raised: bool
    at: float
    value: float | None
    normal: float | None = None
    threshold: float | None = None


@dataclass(slots=True)
class _Run:
    bad: int = 0
    good: int = 0
    raised: bool = False
    since: float = 0.0


#: The metrics a camera's normal keeps, with the smallest step a later sample may move it by (see
#: :meth:`Normal.add`): in their own units (score, luma levels, chroma per level, bytes).
METRICS: dict[str, float] = {
    "blur": 0.02,
    "noise": 0.2,
    "luma": 4.0,
    "clipped": 0.02,
    "cast_u": 0.02,
    "cast_v": 0.02,
    "stripes": 0.2,
    "change": 0.1,
    "inter_low": 200.0,
    "key_bytes": 500.0,
}


@dataclass(slots=True)
class _Level:
    n: int = 0
    value: float = 0.0
    first: list[float] = field(default_factory=list)


@dataclass
class Normal:
    """What one camera shows when healthy: the median of its first samples, then a slow follower.

    A later sample moves a level by ``follow`` of its distance, the distance limited to half the
    level (at least the metric's step): one odd healthy sample (a bus filling the view) cannot drag
    the normal, a slow change (the season, a longer day) is followed within a few hundred samples.
    """

    learn: int = 15
    follow: float = 0.01
    levels: dict[str, _Level] = field(default_factory=dict)

    def add(self, metric: str, x: float | None) -> None:
        if x is None or not math.isfinite(x):
            return
        lv = self.levels.get(metric)
        if lv is None:
            lv = self.levels[metric] = _Level()
        if lv.n < self.learn:
            lv.first.append(x)
            lv.n += 1
            lv.value = statistics.median(lv.first)
            if lv.n == self.learn:
                lv.first = []
            return
        span = max(abs(lv.value) * 0.5, METRICS.get(metric, 0.0))
        lv.value += self.follow * (min(max(x, lv.value - span), lv.value + span) - lv.value)
        lv.n += 1

    def get(self, metric: str, at_least: int) -> float | None:
        """The normal of ``metric`` once learned from ``at_least`` samples, else None."""
        lv = self.levels.get(metric)
        return lv.value if lv is not None and lv.n >= at_least else None

    def state(self) -> dict[str, tuple[int, float]]:
        """What is kept across restarts: samples seen and level, per metric."""
        return {m: (lv.n, round(lv.value, 6)) for m, lv in self.levels.items()}

    def restore(self, state: dict[str, tuple[int, float]] | dict[str, list[float]]) -> None:
        for m, pair in state.items():
            if m not in METRICS or len(pair) != 2:
                continue
            n, value = int(pair[0]), float(pair[1])
            if n <= 0 or not math.isfinite(value):
                continue
            self.levels[m] = _Level(n, value, [value] * n if n < self.learn else [])


@dataclass
class _Reference:
    """The camera's normal view, learned from samples with no defect."""

    n: int = 0
    thumb: npt.NDArray[np.float32] | None = None
    means: npt.NDArray[np.float32] | None = None
    stds: npt.NDArray[np.float32] | None = None
    #: Per block, how well healthy samples matched the view: high where the view has a fixed layout
    #: (walls, kerbs, windows), low where it is textureless or only shows what moves (a hand, traffic).
    stable: npt.NDArray[np.float32] | None = None
    #: How the light fell across the last healthy samples (:func:`checks.light_layout`), newest last.
    lights: list[npt.NDArray[np.float32]] = field(default_factory=list)

    def learn(
        self,
        thumb: npt.NDArray[np.float32],
        means: npt.NDArray[np.float32],
        stds: npt.NDArray[np.float32],
        view: npt.NDArray[np.float32] | None = None,
    ) -> None:
        light = C.light_layout(means)
        if self.thumb is None or self.means is None or self.stds is None or self.thumb.shape != thumb.shape:
            self.thumb, self.means, self.stds, self.n, self.stable = thumb.copy(), means.copy(), stds.copy(), 1, None
            self.lights = [light]
            return
        self.lights = [*self.lights[-(LIGHTS - 1):], light]
        a = 0.2 if self.n >= 5 else 1.0 / (self.n + 1)  # average the first few, then follow slowly
        self.thumb += a * (thumb - self.thumb)
        self.means += a * (means - self.means)
        self.stds += a * (stds - self.stds)
        if view is not None and view.shape == means.shape:
            self.stable = view.copy() if self.stable is None else self.stable + 0.2 * (view - self.stable)
        self.n += 1

    def light_shift(self, means: npt.NDArray[np.float32]) -> float | None:
        """How far the light across the view moved from where it fell in the last healthy samples.

        Against their per-block median, so a hand or a car that crossed some of them is not part of
        the view; None until a few are learned.
        """
        if len(self.lights) < 3 or self.lights[0].shape != means.shape:
            return None
        return C.light_shift(C.light_layout(means), np.median(np.stack(self.lights), axis=0))

    def layout_match(self, view: npt.NDArray[np.float32] | None, min_share: float) -> float | None:
        """Median similarity over the blocks that hold the view's fixed layout; None when too few do.

        A plain wall or a view where only moving things have texture has no layout to compare: no
        block votes for a turned camera there, and no verdict is better than one made of noise.
        """
        if view is None or self.stable is None or self.stable.shape != view.shape:
            return None
        layout = self.stable >= 0.5
        if np.count_nonzero(layout) < max(4, min_share * layout.size):
            return None
        return C.median(view[layout])

    def layout_share(self) -> float:
        """Share of the blocks that hold the view's fixed layout (0 before it is learned)."""
        return 0.0 if self.stable is None else float(np.count_nonzero(self.stable >= 0.5)) / self.stable.size


#: Healthy samples whose light across the view is remembered (:meth:`_Reference.light_shift`).
LIGHTS = 9

Verdicts = dict[CheckName, Verdict]
#: Defects of the whole picture, judged first: while one is raised the later checks are not judged.
_WIDE: tuple[CheckName, ...] = ("black_screen", "solid_screen", "too_dark", "too_bright")
#: Defects that add texture to the picture: while one is raised (or a starved keyframe cannot say whether
#: the snow is gone) the view and the normal are not learned, though the sample may be judged good.
_TEXTURE: tuple[CheckName, ...] = ("snow_noise", "stripes")


@dataclass
class DeviceAnalyzer:
    cfg: AnalysisConfig
    runs: dict[str, _Run] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    prev: tuple[npt.NDArray[np.uint8], ...] = ()  # the last two keyframes' pictures
    ref: _Reference = field(default_factory=_Reference)
    motion: MotionDetector | None = None
    stream: Stream = "main"  # the camera's stream whose pictures this state is made of
    _starved: int = 0  # starved keyframes in a row (see the snow check)

    def __post_init__(self) -> None:
        self.enabled = frozenset(self.cfg.checks)
        self.runs = {c: _Run() for c in CHECKS if c in self.enabled}
        self._every = self.enabled.issuperset(CHECKS)  # verdicts need no filtering
        self._hysteresis = {c: self.cfg.hysteresis_for(c) for c in CHECKS if c in self.enabled}
        self.normal = Normal(self.cfg.learn_samples, self.cfg.follow)
        if self.cfg.motion.enabled:
            self.motion = MotionDetector(self.cfg.motion)

    def resume(self, raised: dict[str, float], normal: dict[str, tuple[int, float]] | None = None) -> None:
        """Start with these checks raised (since when) and this normal (see :meth:`Normal.state`).

        Raised checks clear after ``clear_after`` good samples, as if never interrupted.
        """
        for check, since in raised.items():
            run = self.runs.get(check)
            if run is not None:
                run.raised, run.since = True, since
        if normal:
            self.normal.restore(normal)

    @property
    def raised(self) -> dict[str, float]:
        """Raised checks and since when."""
        return {c: r.since for c, r in self.runs.items() if r.raised}

    def _learned(self, metric: str) -> float | None:
        return self.normal.get(metric, self.cfg.learn_min)

    # -- verdicts --------------------------------------------------------------------------------
    def verdicts(self, pic: Picture | None) -> Verdicts:
        """A verdict per check that has one for this sample; learns the view and the normal from healthy ones."""
        if pic is None:
            return self._only({"signal_loss": Verdict(True, 1.0)})
        out: Verdicts = {"signal_loss": Verdict(False, 0.0)}
        on = self.enabled
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
        level = C.median(means)
        spread = C.flat_spread(means, stds, th.solid_max_std)
        # One uniform screen: flat almost everywhere *and* the same level everywhere. A dark scene
        # (a night yard, a room with one lit object) is flat too, but darker here and lighter there.
        solid = flat >= th.solid_min_share and spread <= th.solid_max_spread
        match = ref.layout_match(view, th.scene_min_layout)
        # A night view turned much too dark is as flat as a black screen but still shows its layout.
        dark_view = match is not None and match >= th.black_max_similarity
        grey = C.color_cast(pic.u_mean, pic.v_mean) <= th.black_max_chroma  # a dark blue screen is not black
        black = solid and level <= th.black_max_luma and grey and not dark_view
        out["black_screen"] = Verdict(black, level, None, th.black_max_luma)
        out["solid_screen"] = Verdict(solid and not black and not dark_view, flat, None, th.solid_min_share)
        if self._any_bad(out) or (solid and not dark_view):
            return self._only(out)
        mean, _ = C.luma_stats(g)
        nm = self._learned("luma")
        dark_at = th.dark_abs_luma
        if nm is not None:
            dark_at = max(dark_at, min(th.dark_max_luma, C.BLACK_LUMA + th.dark_ratio * (nm - C.BLACK_LUMA)))
        out["too_dark"] = Verdict(mean <= dark_at, mean, nm, dark_at)
        clipped = C.clipped_share(g, th.bright_luma)
        nc = self._learned("clipped")
        clip_at = max(th.bright_min_share, (nc or 0.0) + th.bright_rise_share)
        wash_at = max(th.bright_mean_luma, (nm or 0.0) + th.bright_rise_luma)
        out["too_bright"] = Verdict(clipped >= clip_at or mean >= wash_at, clipped, nc, clip_at)
        if self._any_bad(out) or self._wide_raised():
            return self._only(out)
        sigma = C.noise_sigma(g) if "occlusion" in on or "snow_noise" in on else 0.0
        held = False  # the snow check's counters held by a starved keyframe
        share: float | None = None
        if "occlusion" in on:
            flat_std = max(th.occlusion_flat_std, th.occlusion_grain_ratio * min(sigma, self._snow_at()))
            ignore = (
                (ref.stds < flat_std) & (ref.means < th.occlusion_dark_luma)
                if ref.means is not None and ref.stds is not None and ref.means.shape == means.shape
                else np.zeros(means.shape, np.bool_)
            )
            if view is not None and view.shape == ignore.shape:
                ignore |= view >= th.occlusion_max_similarity  # still the normal view: blurred, not covered
            share = C.flat_dark_share(means, stds, flat_std, th.occlusion_dark_luma, ignore)
            # Before a view is learned a dark flat scene cannot be told from a cover: no verdict.
            if view is not None:
                # A cover held in place does not shrink: once the lens is found covered, it stays so down to
                # ``occlusion_keep_share``. A cover near the limit (most of a night view, whose dark part
                # cannot show a cover) otherwise went bad and good in turns, and the checks after this one
                # took the covered picture for frozen or turned.
                run = self.runs.get("occlusion")
                at = th.occlusion_keep_share if run is not None and (run.raised or run.bad) else th.occlusion_min_share
                out["occlusion"] = Verdict(share >= at, share, None, at)
                if share >= at:
                    return self._only(out)
        sample: dict[str, float | None] = {"luma": mean, "clipped": clipped, "inter_low": pic.inter_bytes}
        if "blur" in on:
            b = C.blur_score(g)
            nb = self._learned("blur")
            at = th.blur_min if nb is None else min(th.blur_min, nb + th.blur_rise)
            out["blur"] = Verdict(b >= at, b, nb, at)
            sample["blur"] = b
        if "color_cast" in on:
            light = max(mean - C.BLACK_LUMA, 16.0)
            cu, cv = (pic.u_mean - 128.0) / light, (pic.v_mean - 128.0) / light
            nu, nv = self._learned("cast_u"), self._learned("cast_v")
            cast = math.hypot(cu, cv)
            bad = cast >= th.cast_min_ratio
            shift = cast if nu is None or nv is None else math.hypot(cu - nu, cv - nv)
            if nu is not None and nv is not None:
                bad = bad or shift >= th.cast_shift
            normal = None if nu is None or nv is None else math.hypot(nu, nv)
            out["color_cast"] = Verdict(bad, shift, normal, th.cast_shift if normal is not None else th.cast_min_ratio)
            sample["cast_u"], sample["cast_v"] = cu, cv
        if "snow_noise" in on:
            at = self._snow_at()
            # A keyframe the encoder starved shows no grain, snow or not: it cannot say that the snow is
            # gone (or has not come), so it holds the counters, for at most ``clear_after`` keyframes in a
            # row, so that a camera whose keyframes stay small still clears.
            nk = self._learned("key_bytes")
            starved = (pic.key_bytes is not None and nk is not None
                       and pic.key_bytes < th.snow_starved_key * nk and sigma < at)
            self._starved = self._starved + 1 if starved else 0
            held = starved and self._starved <= self._hysteresis["snow_noise"].clear_after
            if not held:
                out["snow_noise"] = Verdict(sigma >= at, sigma, self._learned("noise"), at)
            sample["noise"] = sigma
        sample["key_bytes"] = pic.key_bytes
        if "stripes" in on:
            amp = C.stripe_amplitude(g)
            na = self._learned("stripes")
            at = max(th.stripe_min_amplitude, (na or 0.0) * th.stripe_rise_ratio)
            out["stripes"] = Verdict(amp >= at, amp, na, at)
            sample["stripes"] = amp
        if prev and "frozen" in on:  # the change from the last keyframes only serves the frozen check
            # Against the last two: a camera or recorder looping a short buffer repeats too.
            grids = [b for b in (C.block_diff(g, p) for p in prev) if b is not None]
            if grids:
                d = min(C.median(b) for b in grids)
                sample["change"] = d
                out["frozen"] = self._frozen(d, min(float(b.max()) for b in grids), pic.inter_bytes)
        if self._any_bad(out):
            return self._only(out)
        turn = self._turned(match, means) if "scene_change" in on else None
        if turn is not None and turn.bad and share is not None and share >= th.occlusion_keep_share:
            # A cover forming, not a turn: a cover over most of a night view sits just under the limit when
            # a part of the view (a dark lawn) cannot show it, and its layout is gone as after a turn. The
            # cover check decides; the view is neither judged turned nor learned.
            return self._only(out)
        if turn is not None:
            out["scene_change"] = turn
            run = self.runs["scene_change"]
            if turn.bad:
                if run.bad + 1 >= self.cfg.scene_adopt_after:
                    self.ref = _Reference()  # the camera stays where it was moved: its view is the new normal
                    self.ref.learn(thumb, means, stds)
                return self._only(out)
        if held or any(self.runs[c].raised for c in _TEXTURE if c in self.runs):
            # Not a healthy sample yet: snow that the encoder quantised below its limit still inflates the
            # blocks' texture; learned, the view took the normally flat blocks of a dim view for textured,
            # and once the snow went they read as a cover, which then kept the view from being learned again.
            return self._only(out)
        self.ref.learn(thumb, means, stds, view)
        if not any(r.raised for r in self.runs.values()):
            for metric, x in sample.items():
                self.normal.add(metric, x)
        return self._only(out)

    def _turned(self, match: float | None, means: npt.NDArray[np.float32]) -> Verdict | None:
        """Turned: the view's layout is gone or, where the view has too little layout to tell (under
        ``scene_broad_layout`` of its blocks), the light falls across the picture otherwise.

        A plain wall has no layout (``match`` None), or hardly more than the OSD clock's, which
        matches wherever the camera points; another part of the wall is lit otherwise. The light alone
        would take a lamp switched on, or a box held up to the lens, for a turn, so a view with a broad
        layout is judged by its layout only. The verdict carries the metric that decided: the layout's
        similarity (bad below its limit) or the light's shift (bad above). The light is only measured
        where it may decide: most views have a broad layout.
        """
        th = self.cfg.thresholds
        gone = match is not None and match < th.scene_min_similarity
        if match is not None and (gone or self.ref.layout_share() >= th.scene_broad_layout):
            return Verdict(gone, match, None, th.scene_min_similarity)
        light = self.ref.light_shift(means)
        if light is None:
            return None if match is None else Verdict(False, match, None, th.scene_min_similarity)
        return Verdict(light >= th.scene_light_shift, light, None, th.scene_light_shift)

    def _snow_at(self) -> float:
        """The grain at which this camera's picture is snow: above its normal grain, or any camera's."""
        th = self.cfg.thresholds
        ns = self._learned("noise")
        if ns is None:
            return th.noise_min_sigma
        return min(th.noise_min_sigma, ns * th.noise_rise_ratio + th.noise_rise_add)

    def _frozen(self, d: float, most: float, inter_bytes: float | None) -> Verdict:
        """Frozen: the keyframe barely changed *and* the encoder spent almost nothing on the frames between.

        ``d`` is the median block change from the last keyframes, ``most`` the largest. Both against
        the camera's normal: a quiet indoor scene changes little between keyframes, but its sensor
        grain still costs the encoder bytes in every inter frame; a held picture costs only the
        ticking clock. Re-encoding the same picture at another quantiser changes a grainy keyframe by
        up to a third of its normal change, so the change limit alone would either miss a frozen
        night view or take a quiet scene for frozen. An outright repeat (``frozen_repeat_diff``) of a
        camera that normally changes more is frozen whatever the bytes: an empty, noise-reduced scene
        costs the encoder as little live as frozen. Before a normal is learned, or for a stream
        without inter frames, only an exact repeat counts, clock included: a dark room where only a
        lamp or the clock moves is alive.
        """
        th = self.cfg.thresholds
        nd, nb = self._learned("change"), self._learned("inter_low")
        if nd is not None and nb is not None and inter_bytes is not None and nb > 0:
            at = max(th.frozen_max_diff, th.frozen_ratio * nd)
            repeat = d <= min(th.frozen_repeat_diff, th.frozen_ratio * nd)  # a still scene has no bytes to lose
            return Verdict(repeat or (d <= at and inter_bytes <= th.frozen_bytes_ratio * nb), d, nd, at)
        at = th.frozen_max_diff if nd is None else min(th.frozen_max_diff, th.frozen_ratio * nd)
        return Verdict(most <= at, d, nd, at)

    def _only(self, out: Verdicts) -> Verdicts:
        return out if self._every else {k: v for k, v in out.items() if k in self.enabled}

    def _any_bad(self, out: Verdicts) -> bool:
        return any(v.bad for k, v in out.items() if k in self.enabled)

    def _wide_raised(self) -> bool:
        """A defect of the whole picture is raised. Until it clears, the checks of what the picture
        shows wait and the view is not learned: a picture near the limit of too dark went good and bad
        in turns, and in its good samples the occlusion check took the dark scene for a cover."""
        return any(self.runs[c].raised for c in _WIDE if c in self.runs)

    # -- hysteresis ------------------------------------------------------------------------------
    def feed(self, pic: Picture | None, t: float) -> list[Change]:
        """One keyframe (or None: the segment had no decodable video); returns raised/cleared checks."""
        changes: list[Change] = []
        for check, v in self.verdicts(pic).items():
            self.values[check] = v.value
            run = self.runs[check]
            h = self._hysteresis[check]
            if v.bad:
                run.bad, run.good = run.bad + 1, 0
                if not run.raised and run.bad >= h.raise_after:
                    run.raised, run.since = True, t
                    changes.append(Change(check, True, t, v.value, v.normal, v.threshold))
            else:
                run.good, run.bad = run.good + 1, 0
                if run.raised and run.good >= h.clear_after:
                    run.raised = False
                    changes.append(Change(check, False, t, v.value, v.normal, v.threshold))
        return changes
