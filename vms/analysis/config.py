"""Settings of the frame analysis: thresholds with bounds, hysteresis, sampling and the worker pool.

Kept apart from the hub's config so that an edge agent can embed the same model and run the same
checks on its own side; the hub mounts it as ``analysis:`` in its YAML.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vms.kernel import ids

CheckName = Literal[
    "signal_loss",
    "black_screen",
    "solid_screen",
    "too_dark",
    "too_bright",
    "occlusion",
    "blur",
    "color_cast",
    "snow_noise",
    "stripes",
    "frozen",
    "scene_change",
]

#: Every check, in precedence order: a check that finds a defect masks the ones after it that the
#: same defect would fool (a black picture is also dark, flat, "frozen" and "blurred").
CHECKS: tuple[CheckName, ...] = get_args(CheckName)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Thresholds(_Model):
    """Metric limits; each metric is documented beside its function in ``vms.analysis.checks``."""

    black_max_luma: float = Field(
        40.0, ge=0, le=128, description="Median block luma at or below which a solid screen is black."
    )
    black_max_similarity: float = Field(
        0.2,
        ge=-1,
        le=1,
        description="Median block correlation with the learned view below which a flat dark picture is a black "
        "screen; at or above it the scene still shows and the picture is too dark.",
    )
    black_max_chroma: float = Field(
        12.0, ge=0, le=128, description="Chroma distance from grey at most which a dark uniform screen is black; a "
        "coloured one (a dark blue \"no video\" screen) is a solid screen."
    )
    solid_max_std: float = Field(3.0, gt=0, le=40, description="Block luma std below which a block is flat.")
    solid_min_share: float = Field(0.9, gt=0, le=1, description="Share of flat blocks that makes a solid screen.")
    solid_max_spread: float = Field(
        4.0, gt=0, le=128, description="Spread (10th to 90th percentile) of the flat blocks' mean luma at most which "
        "a flat picture is one uniform screen; a dark scene varies more, from place to place."
    )
    dark_max_luma: float = Field(
        35.0, ge=0, le=128, description="Mean luma above which a picture is never too dark, whatever its normal."
    )
    dark_ratio: float = Field(
        0.4, gt=0, lt=1, description="Share of the camera's normal light (mean luma above black) at or below which "
        "the picture is too dark."
    )
    dark_abs_luma: float = Field(
        20.0, ge=0, le=128, description="Mean luma at or below which a picture is too dark for any camera (at black)."
    )
    bright_min_share: float = Field(
        0.45, gt=0, le=1, description="Share of clipped-white pixels at which the picture is overexposed."
    )
    bright_mean_luma: float = Field(
        190.0, ge=0, le=255, description="Mean luma at or above which the picture is washed out (overexposed)."
    )
    bright_luma: int = Field(230, ge=128, le=255, description="Luma counted as clipped white.")
    bright_rise_share: float = Field(
        0.25, ge=0, le=1, description="Clipped share above the camera's normal needed as well (a view with a white sky "
        "clips a part of itself every day)."
    )
    bright_rise_luma: float = Field(
        40.0, ge=0, le=255, description="Mean luma above the camera's normal needed as well for a washed-out picture."
    )
    occlusion_min_share: float = Field(
        0.35, gt=0, le=1, description="Share of the view newly flat and dark at which the lens is covered."
    )
    occlusion_keep_share: float = Field(
        0.25, gt=0, le=1, description="Share at or above which a lens found covered (or being found so) stays covered."
    )
    occlusion_flat_std: float = Field(3.0, gt=0, le=40, description="Block luma std below which a block is flat.")
    occlusion_grain_ratio: float = Field(
        1.2, ge=0, le=10, description="Block luma std below this multiple of the picture's grain (its noise sigma, up "
        "to where snow starts) is flat too: a cover in front of a grainy night sensor shows the grain."
    )
    occlusion_dark_luma: float = Field(80.0, ge=0, le=255, description="Block mean luma below which a block is dark.")
    occlusion_max_similarity: float = Field(
        0.3,
        ge=-1,
        le=1,
        description="Block correlation with the learned view below which a flat dark block is covered; a blurred "
        "block still shows the view's layout.",
    )
    blur_min: float = Field(
        0.6, gt=0, lt=1, description="Blur score (0 sharp .. 1 smooth) at which any view is blurred, whatever its "
        "normal: a camera installed out of focus."
    )
    blur_rise: float = Field(
        0.08, gt=0, lt=1, description="Blur score above the camera's normal at which its view is blurred."
    )
    cast_min_ratio: float = Field(
        0.5,
        gt=0,
        le=10,
        description="Chroma distance from grey per luma level above black at which any view's colours are cast.",
    )
    cast_shift: float = Field(
        0.12, gt=0, le=10, description="Distance of the chroma per luma level from the camera's normal at which its "
        "colours are cast (a lawn is green every day)."
    )
    noise_min_sigma: float = Field(
        12.0, gt=0, le=100, description="Estimated noise sigma (luma levels) that is snow for any camera."
    )
    noise_rise_ratio: float = Field(
        1.8, gt=1, le=100, description="Noise sigma as a multiple of the camera's normal grain (plus "
        "noise_rise_add) at which it is snow."
    )
    noise_rise_add: float = Field(0.4, ge=0, le=100, description="Luma levels added to the multiple of the normal.")
    snow_starved_key: float = Field(
        0.6, ge=0, le=1, description="A keyframe under this share of the camera's normal keyframe size was starved by "
        "its encoder (its grain quantised away): it holds the snow check's counters instead of saying 'no snow'."
    )
    stripe_min_amplitude: float = Field(
        5.0, gt=0, le=128, description="Amplitude (luma levels) of a periodic row/column pattern that is interference."
    )
    stripe_rise_ratio: float = Field(
        2.5, gt=1, le=100, description="Amplitude as a multiple of the camera's normal (a fence, a tiled wall) "
        "needed as well."
    )
    frozen_max_diff: float = Field(
        0.3, ge=0, le=20, description="Median block |difference| from a recent keyframe below which it is frozen "
        "before the camera's normal change is learned."
    )
    frozen_ratio: float = Field(
        0.4, gt=0, lt=1, description="Share of the camera's normal keyframe change at or below which the picture "
        "may be frozen."
    )
    frozen_repeat_diff: float = Field(
        0.05, ge=0, le=20, description="Median block |difference| at or below which a keyframe repeats the last one "
        "outright: frozen whatever the bytes, once the camera's normal change is larger."
    )
    frozen_bytes_ratio: float = Field(
        0.3, gt=0, lt=1, description="Share of the camera's normal bytes per inter frame at or below which the "
        "stream carries no change (a frozen picture costs the encoder almost nothing)."
    )
    scene_min_layout: float = Field(
        0.1, ge=0, le=1, description="Share of blocks with a fixed layout (matching the learned view when healthy) "
        "needed to judge a turned camera or a dark view by its layout."
    )
    scene_min_similarity: float = Field(
        0.4, ge=-1, le=1, description="Correlation with the learned view below which the camera has moved."
    )
    scene_broad_layout: float = Field(
        0.3, ge=0, le=1, description="Share of blocks with a fixed layout from which the layout alone judges a turned "
        "camera; a view with less (a plain wall, an OSD clock) is judged by the light across it too."
    )
    scene_light_shift: float = Field(
        0.12, gt=0, le=10, description="Median move of each block's light (its level over the median block's) from "
        "the learned view at or above which a camera whose layout does not decide has moved."
    )

    @model_validator(mode="after")
    def _keep_below_raise(self) -> Thresholds:
        if self.occlusion_keep_share > self.occlusion_min_share:
            raise ValueError(f"occlusion_keep_share {self.occlusion_keep_share} is above occlusion_min_share "
                             f"{self.occlusion_min_share}: a covered lens must stay covered at least down to where "
                             "it was found covered")
        return self


class Hysteresis(_Model):
    raise_after: int = Field(2, ge=1, le=1000, description="Consecutive bad samples that raise the defect.")
    clear_after: int = Field(2, ge=1, le=1000, description="Consecutive good samples that clear it.")


class MotionConfig(_Model):
    enabled: bool = True
    fps: float = Field(5.0, gt=0, le=30, description="Frames analysed per second for motion.")
    max_height: int = Field(
        480,
        ge=0,
        le=4320,
        description="Fully decode main streams up to this height for motion (a small camera's only stream); taller "
        "streams get motion from keyframes only, so the hub never full-decodes 1080p main streams. A sub stream "
        "only with decode_sub.",
    )
    threshold: int = Field(25, ge=1, le=255, description="Luma change counted as motion.")
    alpha: float = Field(0.05, gt=0, le=1, description="Background running-average weight per analysed frame.")
    min_area: float = Field(0.001, ge=0, le=1, description="Smallest box, as a share of the picture.")
    recalibrate_share: float = Field(
        0.6, gt=0, le=1, description="Change over this share of the picture is light, not motion: relearn."
    )
    decode_sub: bool = Field(
        False,
        description="Fully decode a camera's sub stream (up to max_height) for motion at `fps`, when the sub stream is "
        "what is analysed: motion between keyframes too, at about a quarter of the cameras per core "
        "(bench/bench_analysis.py). Off: motion from the sub stream's keyframes, as for a 1080p main stream.",
    )


class CameraAnalysis(_Model):
    """One camera's exceptions: a view dark by design, a fountain that never stops, a lens that fogs.
    Without them such a camera alerts every night or never stops alerting, and the crew learns to
    ignore the alerts."""

    checks: list[CheckName] | None = Field(None, description="The checks run on this camera, instead of the list.")
    sub_stream: bool | None = Field(
        None, description="Analyse this camera's sub stream while live (None: as `analysis.sub_stream`); off for a "
        "camera whose sub stream is not its main picture (a crop, a dewarped view)."
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict, max_length=64, description="Thresholds that differ for this camera, by name."
    )

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, v: dict[str, float]) -> dict[str, float]:
        Thresholds.model_validate(v)  # unknown names and out-of-bounds values fail here, at load
        return v


_FROZEN_DEFAULT: dict[CheckName, Hysteresis] = {"frozen": Hysteresis(raise_after=1, clear_after=2)}


class AnalysisConfig(_Model):
    enabled: bool = Field(True, description="Run the frame analysis on relayed segments.")
    workers: int = Field(0, ge=0, le=256, description="Analysis processes; 0 = one per core.")
    queue_per_worker: int = Field(
        32, ge=1, le=10000, description="Segments waiting per worker; beyond this new ones are dropped and counted."
    )
    width: int = Field(320, ge=64, le=1920, description="Width of the analysed luma picture (aspect kept).")
    checks: list[CheckName] = Field(default_factory=lambda: list(CHECKS), description="Checks to run.")
    thresholds: Thresholds = Field(default_factory=Thresholds)
    hysteresis: Hysteresis = Field(default_factory=Hysteresis)
    per_check: dict[CheckName, Hysteresis] = Field(
        # One frozen verdict already compares two keyframes 2 s apart (4 s of identical picture
        # when raised), and live footage stays several times above the threshold.
        default_factory=lambda: _FROZEN_DEFAULT.copy(),
        description="Hysteresis overrides for single checks.",
    )
    learn_samples: int = Field(
        15, ge=1, le=10000, description="Healthy keyframes whose median is the camera's first normal (30 s at GOP 2 s)."
    )
    learn_min: int = Field(
        3, ge=1, le=10000, description="Healthy keyframes before checks are taken relative to the normal; before, only "
        "the absolute guards apply."
    )
    follow: float = Field(
        0.01, gt=0, le=1, description="Weight of each later healthy keyframe in the normal: it follows slow changes "
        "(seasons, the length of days) over a few hundred keyframes."
    )
    scene_adopt_after: int = Field(
        150, ge=1, le=100000, description="Bad samples after which a moved camera's new view becomes the reference."
    )
    sub_stream: bool = Field(
        True,
        description="Analyse a camera's sub stream (子码流) instead of its main stream while it has one live: its "
        "keyframes cost several times less to decode, and the main stream is then not decoded for analysis at all.",
    )
    sub_stale_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="A camera whose newest sub-stream segment is older than this is analysed from its main stream "
        "again.",
    )
    snapshot_width: int = Field(640, ge=64, le=3840, description="Width of JPEG snapshots of raised defects.")
    motion: MotionConfig = Field(default_factory=MotionConfig)
    cameras: dict[ids.DeviceIdKey, CameraAnalysis] = Field(
        default_factory=dict,
        max_length=100_000,
        description="Per-camera exceptions by device ID: the checks to run, thresholds that differ.",
    )

    def hysteresis_for(self, check: CheckName) -> Hysteresis:
        return self.per_check.get(check, self.hysteresis)

    def for_device(self, device_id: str) -> AnalysisConfig:
        """The settings one camera is analysed with: these, with that camera's exceptions."""
        own = self.cameras.get(device_id)
        if own is None:
            return self
        update: dict[str, object] = {}
        if own.checks is not None:
            update["checks"] = own.checks
        if own.sub_stream is not None:
            update["sub_stream"] = own.sub_stream
        if own.thresholds:
            update["thresholds"] = Thresholds.model_validate({**self.thresholds.model_dump(), **own.thresholds})
        return self.model_copy(update=update)
