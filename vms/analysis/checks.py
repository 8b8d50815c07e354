"""Video-quality metrics (视频质量诊断): small pure functions over numpy arrays.

Every function takes the *analysis picture*: the luma (Y) plane scaled to about 320 pixels wide
with ``cv2.resize(INTER_LINEAR)`` (40 µs from 1080p, where ``INTER_AREA`` costs 600 µs), uint8,
limited or full range. Metrics are in luma levels or shares so that thresholds read plainly; the
thresholds live in :class:`vms.analysis.config.Thresholds`. Nothing here keeps state: the
per-camera memory (previous keyframe, learned view, the normal) is in :mod:`vms.analysis.analyzer`;
the only memory here is each thread's work arrays (:func:`scratch`), whose contents never outlive a call.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]
F32 = npt.NDArray[np.float32]

#: Blocks of the grid used by block statistics (columns, rows): 20x20 pixels at 320x180.
GRID = (16, 9)
#: Size of the thumbnail compared with the learned view for scene change.
THUMB = (96, 54)

#: ``cv2.GaussianBlur(x, (0, 0), 3)``'s kernel for float pictures, made once instead of at every call.
_GAUSS_3 = cv2.getGaussianKernel(25, 3, cv2.CV_32F)
#: Immerkær's noise mask [[1, -2, 1], [-2, 4, -2], [1, -2, 1]] is this kernel along each axis.
_SECOND = np.array([1, -2, 1], np.float32)


_local = threading.local()


def scratch(slot: str, shape: tuple[int, ...], dtype: type[np.generic]) -> npt.NDArray[Any]:
    """A work array of this thread for ``slot``, reused from keyframe to keyframe (contents undefined).

    The full-size temporaries of the checks and of motion are 50 to 350 KB each. Allocated and freed
    at every keyframe, they made the C allocator hand their pages back to the system and fault them
    in again: 60 to 230 faults a keyframe at about 3 µs each on the test VM, 0.2 ms of a sub stream's
    keyframe. A worker keeps one array per slot and picture size (a few, whatever the number of cameras).
    """
    bufs: dict[tuple[str, tuple[int, ...], type[np.generic]], npt.NDArray[Any]] = _local.__dict__.setdefault("bufs", {})
    key = (slot, shape, dtype)
    b = bufs.get(key)
    if b is None:
        if len(bufs) >= 64:  # many odd sizes: start again rather than grow
            bufs.clear()
        b = bufs[key] = np.empty(shape, dtype)
    return b


def median(a: npt.NDArray[Any]) -> float:
    """``np.median`` of a small array (a block grid) with one partition: a tenth of its cost."""
    p = a.flatten()  # a copy, partitioned in place
    n = p.size
    if n == 0:
        return math.nan
    k = n // 2
    if n % 2:
        p.partition(k)
        return float(p[k])
    p.partition((k - 1, k))
    return (float(p[k - 1]) + float(p[k])) / 2.0


def quantiles(a: npt.NDArray[Any], qs: tuple[float, ...]) -> list[float]:
    """``np.quantile`` (linear interpolation) of a small array at each of ``qs``, with one partition."""
    p = a.flatten()  # a copy, partitioned in place
    n = p.size
    pos = [q * (n - 1) for q in qs]
    p.partition(sorted({i for x in pos for i in (int(x), min(int(x) + 1, n - 1))}))
    return [float(p[int(x)]) + (x - int(x)) * (float(p[min(int(x) + 1, n - 1)]) - float(p[int(x)])) for x in pos]


def analysis_picture(y: U8, width: int) -> U8:
    """The luma plane (a strided view is fine) scaled to ``width`` pixels, aspect kept."""
    h, w = y.shape
    if w <= width:
        return y.copy()  # never keep a view: the decoder reuses its frame buffers
    height = max(GRID[1], round(h * width / w))
    return cv2.resize(y, (width, height), interpolation=cv2.INTER_LINEAR)  # type: ignore[return-value]


def luma_stats(g: U8) -> tuple[float, float]:
    """Mean and standard deviation of luma. A black or solid screen has a std of a few levels."""
    mean, std = cv2.meanStdDev(g)
    return float(mean[0, 0]), float(std[0, 0])


def grid_means(x: npt.NDArray[Any]) -> F32:
    """Mean of ``x`` (uint8, uint16, int16 or float32) in each block of :data:`GRID`.

    What ``cv2.resize(INTER_AREA)`` of the picture in float32 gives, without a float copy of it: each
    row is summed across each block's width (``cv2.reduce`` over the rows cut into block-wide pieces,
    exact), and only those 16 narrow columns of sums are area-resized. A picture that is not a whole
    number of blocks high (320x262 from a 704x576 sub stream, 320x240 from 4:3) costs no more: the
    general area resize of the whole picture would cost five times the rest.
    """
    h, w = x.shape
    if w % GRID[0] or not x.flags.c_contiguous:
        return cv2.resize(x.astype(np.float32), GRID, interpolation=cv2.INTER_AREA)  # type: ignore[return-value]
    bw = w // GRID[0]
    depth = cv2.CV_32S if x.dtype == np.uint8 else cv2.CV_32F  # exact either way; 32S is faster from uint8
    sums = cv2.reduce(x.reshape(h * GRID[0], bw), 1, cv2.REDUCE_SUM, dtype=depth).reshape(h, GRID[0])
    return cv2.resize(sums.astype(np.float32), GRID, interpolation=cv2.INTER_AREA) * np.float32(1.0 / bw)


def block_stats(g: U8) -> tuple[F32, F32]:
    """Mean and std of luma in each block of :data:`GRID` (rows x columns arrays)."""
    m = grid_means(g)
    m2 = grid_means(cv2.multiply(g, g, dst=scratch("16", g.shape, np.uint16), dtype=cv2.CV_16U))
    return m, np.sqrt(np.maximum(m2 - m * m, 0.0))


def flat_share(stds: F32, flat_std: float) -> float:
    """Share of blocks whose luma std is below ``flat_std``.

    A black, blue or grey screen is flat almost everywhere even when the encoder still burns in
    an OSD clock or a "NO VIDEO" caption, which a whole-picture std would count as contrast.
    """
    return float(np.count_nonzero(stds < flat_std)) / stds.size


def flat_spread(means: F32, stds: F32, flat_std: float) -> float:
    """Spread (10th to 90th percentile) of the mean luma of the flat blocks, in luma levels.

    A black, blue or grey screen is one level everywhere (a few levels of encoder noise); a dark
    scene with nothing in it is flat too, but the floor, the wall and the sky differ by more. Infinite
    when no block is flat.
    """
    flat = means[stds < flat_std]
    if flat.size == 0:
        return math.inf
    lo, hi = quantiles(flat, (0.1, 0.9))
    return hi - lo


def clipped_share(g: U8, level: int) -> float:
    """Share of pixels at or above ``level``: an overexposed picture is mostly clipped white.

    Glare at night clips a wide bloom around the light. An exposure fault by day or at dusk may
    clip only the brighter third and lift the rest close to white, so the analyzer also calls a
    picture whose mean luma reaches ``bright_mean_luma`` overexposed (washed out).
    """
    clipped = np.greater_equal(g, level, out=scratch("a", g.shape, np.uint8).view(np.bool_))
    return float(np.count_nonzero(clipped)) / g.size


def flat_dark_share(means: F32, stds: F32, flat_std: float, dark_luma: float, ignore: npt.NDArray[np.bool_]) -> float:
    """Share of blocks that are flat (std < ``flat_std``) and dark (mean < ``dark_luma``).

    A covered lens (hand, bag, tape, spray) leaves a large region with no texture. ``ignore``
    removes blocks that are not a cover: those flat and dark in the camera's normal view (night
    sky, a black wall) and those that still show the normal view's layout (see
    :func:`block_similarity`): a blurred night view is flat and dark too, but keeps its layout.
    """
    covered = (stds < flat_std) & (means < dark_luma) & ~ignore
    return float(np.count_nonzero(covered)) / covered.size


#: Share of the blocks, those with the most gradient, that :func:`blur_score` reads.
BLUR_EDGE_SHARE = 0.25


def blur_score(g: U8) -> float:
    """Blur of the picture, 0 (sharp) to 1 (smooth), after Crété-Roffet et al. (2007).

    The picture is blurred again with a 7-pixel box along each axis; a sharp picture loses most of
    its neighbour differences doing so, an already blurred one keeps them. Score = share of the
    neighbour differences that survives re-blurring, the worse of both axes. Contrast and content level
    cancel out in the ratio. Sensor grain does not: at night it is most of the neighbour
    differences and makes a defocused view look sharp. So the score is taken at half size
    (``pyrDown``: a 5-tap Gaussian, then every other pixel), which averages the grain away but keeps
    the edges that a defocus smears; at a quarter of the pixels it is also cheaper. Only the blocks of
    :data:`GRID` with the most gradient count (:data:`BLUR_EDGE_SHARE`): where the view has edges. A
    plain wall or a night sky shows only grain, sharp whatever the focus, and over most of a dim view
    it outweighed the edges a defocus smears. Each of those blocks counts alike (the mean of their
    own shares, not a share of their summed gradient): the camera's OSD, white text laid on the
    picture after the lens and so sharp whatever the focus, is the strongest gradient of a dim view
    and in a sum outweighed the scene's edges, halving what a defocus adds to the score.
    """
    g = np.asarray(cv2.pyrDown(g), np.uint8)
    scores = []
    for axis, k in ((0, (1, 7)), (1, (7, 1))):
        b = cv2.blur(g, k)
        if axis == 0:
            d_f, d_b = cv2.absdiff(g[1:], g[:-1]), cv2.absdiff(b[1:], b[:-1])
        else:
            d_f, d_b = cv2.absdiff(g[:, 1:], g[:, :-1]), cv2.absdiff(b[:, 1:], b[:, :-1])
        f = grid_means(d_f).ravel()
        v = grid_means(cv2.subtract(d_f, d_b)).ravel()  # saturating: max(0, d_f - d_b)
        n = max(1, round(BLUR_EDGE_SHARE * f.size))
        edges = np.argpartition(f, -n)[-n:]
        scores.append(1.0 - float(np.mean(v[edges] / np.maximum(f[edges], 1e-6))))  # a flat block: 1
    return max(scores)


def noise_sigma(g: U8) -> float:
    """Noise standard deviation in luma levels (Immerkær 1996), robust to edges.

    The 3x3 Laplacian-difference mask cancels smooth content; its mean absolute response in a
    block times sqrt(pi/2)/6 estimates the noise sigma there. Edges inflate some blocks, so the
    lower quartile of blocks is taken. Snow (雪花) shows as a sigma far above sensor grain.
    """
    # The mask is [1, -2, 1] along each axis: two 3-tap passes, in whole numbers (at most 16 x 255).
    r = scratch("16", g.shape, np.uint16).view(np.int16)
    cv2.sepFilter2D(g, cv2.CV_16S, _SECOND, _SECOND, dst=r, borderType=cv2.BORDER_REFLECT)
    blocks = grid_means(np.abs(r, out=r)).ravel()
    q = float(np.partition(blocks, blocks.size // 4)[blocks.size // 4])
    return q * math.sqrt(math.pi / 2) / 6.0


def _periodic_amplitude(profile: npt.NDArray[Any]) -> float:
    n = profile.size
    lo, hi = max(2, n // 40), n // 3  # periods of 3 to 40 pixels
    if hi <= lo:
        return 0.0
    k = max(3, n // 24) | 1
    detrended = profile - cv2.blur(profile.reshape(-1, 1), (1, k), borderType=cv2.BORDER_REFLECT).ravel()
    # The magnitude of those periods' bins only, scaled once their largest is found.
    return float(np.abs(np.fft.rfft(detrended)[lo : hi + 1]).max()) * (2.0 / n)


def stripe_amplitude(g: U8) -> float:
    """Amplitude in luma levels of the strongest periodic pattern along rows or columns.

    Interference (条纹干扰) lays bars across the whole picture, so the row (or column) means carry
    a clean sinusoid; scene structure such as windows covers part of a row and averages down.
    """
    rows = cv2.reduce(g, 1, cv2.REDUCE_AVG, dtype=cv2.CV_32F).ravel()
    cols = cv2.reduce(g, 0, cv2.REDUCE_AVG, dtype=cv2.CV_32F).ravel()
    return max(_periodic_amplitude(rows), _periodic_amplitude(cols))


def color_cast(u_mean: float, v_mean: float) -> float:
    """Distance of the mean chroma (Cb, Cr) from neutral grey (128, 128), in chroma levels.

    Most scenes average to nearly grey; a failed IR-cut filter, a broken colour channel or wrong
    white balance shifts the whole picture one way.
    """
    return math.hypot(u_mean - 128.0, v_mean - 128.0)


#: Luma of black in limited-range video; full-range black (0) only makes the ratio a bit larger.
BLACK_LUMA = 16.0
#: Luma levels above black below which a block's light is not told apart (:func:`light_layout`).
_LIGHT_FLOOR = 4.0


def cast_ratio(u_mean: float, v_mean: float, luma_mean: float) -> float:
    """:func:`color_cast` per luma level above black: the cast's strength whatever the light.

    A cast is a gain per colour channel, so its chroma offset grows with the light: the same
    failed white balance moves the chroma a third as far on a night view a third as bright.
    Dividing by the mean luma above black (at least 16 levels) makes night and day read alike.
    """
    return color_cast(u_mean, v_mean) / max(luma_mean - BLACK_LUMA, 16.0)


def block_diff(g: U8, prev: U8) -> F32 | None:
    """Mean |difference| from an earlier keyframe in each block of :data:`GRID`, in luma levels (None: sizes differ)."""
    if g.shape != prev.shape:
        return None
    return grid_means(cv2.absdiff(g, prev, dst=scratch("b", g.shape, np.uint8)))


def frozen_diff(g: U8, prev: U8) -> float:
    """Median over blocks of the mean |difference| from an earlier keyframe, in luma levels.

    A live camera differs everywhere by at least its sensor grain (about a level or more after
    compression); a frozen one repeats the same picture, re-encoded identically or nearly so. The
    median ignores an OSD clock that keeps ticking and a few changed blocks.
    """
    d = block_diff(g, prev)
    return math.inf if d is None else median(d)


def inter_level(sizes: list[int]) -> float | None:
    """The lower quartile of a GOP's inter-frame sizes in bytes (None: no inter frame).

    A live view costs the encoder bytes in every frame (its grain, what moves); a held picture costs
    almost nothing, except in the few frames where the clock ticks or the encoder refines the keyframe
    it has just re-encoded (a sub stream with bits to spare does so for most of a GOP). The mean of
    the GOP follows those few frames; its lower quartile stays with the frames that carry no change.
    """
    if not sizes:
        return None
    k = len(sizes) // 4
    return float(sorted(sizes)[k])


def thumbnail(g: U8) -> F32:
    """The layout of the view: a small picture (grain averages out) minus its own blur.

    Taking away the blurred picture removes the broad bands every street view shares (sky above,
    road below), which would otherwise keep the correlation high after the camera is turned. The
    small picture is a box average sampled bilinearly: what ``INTER_AREA`` gives (within a level) at
    a third of its cost for a scale such as 320 to 96.
    """
    h, w = g.shape
    k = (max(1, round(w / THUMB[0])), max(1, round(h / THUMB[1])))
    box = cv2.blur(g, k, dst=scratch("a", g.shape, np.uint8)) if k != (1, 1) else g
    small = cv2.resize(box, THUMB, interpolation=cv2.INTER_LINEAR)
    # cv2.GaussianBlur(small, (0, 0), 3) in float, and the difference in float, straight from uint8.
    blurred = cv2.sepFilter2D(small, cv2.CV_32F, _GAUSS_3, _GAUSS_3)
    return cv2.subtract(small, blurred, dtype=cv2.CV_32F)  # type: ignore[return-value]


def block_similarity(a: F32, b: F32) -> F32:
    """Normalised cross-correlation of two thumbnails in each block of :data:`GRID`, -1..1.

    Blind to gain and offset per block, so a dark view (night, a failing iris) still matches its
    daytime layout block by block, as a blurred one does at the thumbnail's coarse scale; a covered,
    black or turned view does not. A block with no texture in either picture scores 0.
    """

    def block_mean(x: F32) -> F32:
        return cv2.resize(x, GRID, interpolation=cv2.INTER_AREA)  # type: ignore[return-value]

    ma, mb = block_mean(a), block_mean(b)
    cov = block_mean(a * b) - ma * mb
    var = np.maximum(block_mean(a * a) - ma * ma, 0.0) * np.maximum(block_mean(b * b) - mb * mb, 0.0)
    den = np.sqrt(var)
    return np.divide(cov, den, out=np.zeros_like(cov), where=den > 1e-4)


def light_layout(means: F32) -> F32:
    """How the light falls across the view: each block's level above black over the median block's.

    A plain wall has no layout for :func:`block_similarity` to compare, but the lamp or the window
    lights it unevenly, and another part of it is lit otherwise. Dividing by the median leaves out
    the gain (iris, night, exposure), so only where the light falls counts.
    """
    above = np.maximum(means - BLACK_LUMA, _LIGHT_FLOOR)
    return above / max(median(above), _LIGHT_FLOOR)


def light_shift(a: F32, ref: F32) -> float:
    """Median over blocks of how far :func:`light_layout` ``a`` moved from ``ref``, as a share of the median level.

    The median ignores what moves in front of the wall while it covers less than half of the blocks.
    """
    return median(np.abs(a - ref))


def similarity(a: F32, b: F32) -> float:
    """Median over blocks of :func:`block_similarity`: how much of the view keeps its layout.

    Lights switching on or dusk change levels but keep the layout; a camera turned or knocked
    away shows a different layout and the median drops. The median ignores what a whole-picture
    correlation cannot: the burnt-in OSD clock, which at night carries most of a dark picture's
    contrast and matches in any direction, and a few blocks crossed by traffic.
    """
    return median(block_similarity(a, b))
