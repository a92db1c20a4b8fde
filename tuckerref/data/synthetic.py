"""Synthetic THETIS-like clips: a figure swinging a racket, forehand (label 0) or backhand (label 1).

A built-in stand-in for the modified THETIS data set of the paper's Section 2.1 (4 channels R, G, B,
depth; F x H x W frames, default the paper's 28 x 120 x 160; label 0 forehand, 1 backhand), so
that the paper's workflow runs with no download.

The scene
---------
A player faces the camera in front of a wall, standing on a floor: legs, shorts, torso, head with
hair, a free arm, and the racket arm attached to the dominant shoulder, holding a racket whose frame
has a distinctive saturated red-orange colour (clothes, skin, wall and floor are muted colours).
The racket hand moves along one fixed arc around the dominant shoulder, parametrised by the sweep
coordinate ``u`` in [0, 1]: ``u = 0`` out on the dominant side behind the body, ``u = 1/2`` low in
front of the body (the contact point, nearest the camera), ``u = 1`` across the body over the other
shoulder. The whole pose (arm, racket, free arm, depths) is a function of ``u`` only.

- forehand (label 0): ``u`` sweeps from the dominant side across the body (``u: ~0 -> ~1``);
- backhand (label 1): the same arc traversed the other way (``u: ~1 -> ~0``).

The sweep follows a raised-cosine profile in time whose centre ``c`` is drawn symmetrically about
the clip's middle and whose duration is random (the speed). Time-reversing a forehand therefore
gives a backhand with centre ``F - 1 - c``, which has the same distribution: the set of still frames
of the two classes has exactly the same distribution (and the middle frame is identically
distributed for both classes), so neither class is recognisable from one still frame with unknown
time; only the order of the motion tells them apart.

Left-handed players (a minority, 15 % by default) are the mirror image of the whole scene. Their
dominant side is visible in any still frame: the racket arm hangs from the dominant shoulder and the
torso is turned so that the dominant shoulder is nearer the camera (brighter in the depth channel).

Depth channel: 255 is nearest (``NEAR_M`` metres), 0 farthest (``FAR_M``), linear in metres; the
wall is farthest, the floor comes nearer towards the bottom of the image, and the racket is behind
the body at both ends of the arc and in front of it at contact. Per-clip variation: position, size,
swing timing and speed, arc extent, sway and drift, handedness, colours, distances, lighting,
camera shake, sensor noise and depth drop-outs.

Determinism: clip ``i`` depends only on ``(seed, i)`` (and the shape), through
``numpy.random.default_rng([seed, i, stream])``, so any subset can be regenerated on its own.
Rendering is vectorised over (frames, rows, columns) with a z-buffer, one primitive at a time.
"""
from __future__ import annotations

import colorsys
import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

CLASS_NAMES = ("forehand", "backhand")
FOREHAND, BACKHAND = 0, 1
DEFAULT_SHAPE = (28, 120, 160)  # (F, H, W) of the paper's clips (Section 2.1)
CHANNELS = 4  # R, G, B, depth
LEFT_HANDED_FRACTION = 0.15
NEAR_M, FAR_M = 1.0, 7.0  # depth range mapped to 255 .. 0

# Random streams of one clip index: the scene, and the balanced label of its pair.
_SCENE_STREAM, _LABEL_STREAM = 0, 1
# The hand's arc around the dominant shoulder (canonical right-hander, dominant side = image left):
# angle in image coordinates (x right, y down), from THETA_FROM at u = 0 to THETA_TO at u = 1.
_THETA_FROM, _THETA_TO = np.deg2rad(200.0), np.deg2rad(-30.0)
# Sensor noise: standard normal quantiles at 256 equiprobable levels, indexed by random bytes
# (several times faster than drawing normals, and as good for pixel noise).
_GAUSS_256 = ndtri((np.arange(256) + 0.5) / 256).astype(np.float32)


@dataclass(frozen=True)
class Scene:
    """Everything random about one clip. Scalar fields are its per-clip metadata (:meth:`metadata`).

    Positions are in pixels of the final (possibly mirrored) image, times in frames, depths in metres.
    """
    label: int
    left_handed: bool
    centre_x: float        # horizontal position of the body axis (final image)
    feet_y: float          # row of the feet
    height_px: float       # figure height in pixels
    scale: float           # height_px / H
    swing_start: float     # frame at which the sweep starts (may be fractional)
    swing_frames: float    # duration of the sweep, frames
    swing_end: float
    swing_speed: float     # mean sweep speed, degrees of arc per frame
    sweep_from: float      # u at the start of the clip's sweep (~0 forehand, ~1 backhand)
    sweep_to: float
    drift_px: float        # horizontal drift of the body over the clip, pixels (final image)
    sway_px: float         # amplitude of the body's vertical sway, pixels
    sway_phase: float
    sway_period: float     # frames
    body_depth: float      # metres from the camera
    wall_depth: float
    shoulder_turn: float   # metres by which the dominant shoulder is nearer than the body axis
    rgb_noise: float       # standard deviation, grey levels
    depth_noise: float
    gain: float            # global illumination factor
    shake_px: float        # standard deviation of the per-frame camera shake
    # colours (uint8-scale RGB triples); not metadata
    shirt: tuple = dataclasses.field(default=(0, 0, 0), repr=False)
    shorts: tuple = dataclasses.field(default=(0, 0, 0), repr=False)
    skin: tuple = dataclasses.field(default=(0, 0, 0), repr=False)
    hair: tuple = dataclasses.field(default=(0, 0, 0), repr=False)
    wall: tuple = dataclasses.field(default=(0, 0, 0), repr=False)
    floor: tuple = dataclasses.field(default=(0, 0, 0), repr=False)
    racket: tuple = dataclasses.field(default=(0, 0, 0), repr=False)
    strings: tuple = dataclasses.field(default=(0, 0, 0), repr=False)
    line_y: float = dataclasses.field(default=0.0, repr=False)  # row of a court line on the floor
    noise_key: int = dataclasses.field(default=0, repr=False)   # seeds the per-pixel noise

    def metadata(self):
        """Per-clip scalar metadata (every scalar field except the label and the noise key)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.repr and f.name != "label"}


def _check_shape(shape):
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape must be (F, H, W), got {shape!r}") from None
    if len(shape) != 3:
        raise ValueError(f"shape must be three sizes (F, H, W), got {shape!r}")
    f, h, w = shape
    if f < 4 or h < 24 or w < 24:
        raise ValueError(f"shape (F, H, W) = {shape} is too small for a visible swing; "
                         f"need F >= 4, H >= 24, W >= 24")
    return shape


def _check_index(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_fraction(left_handed_fraction):
    if not 0.0 <= left_handed_fraction <= 1.0:
        raise ValueError(f"left_handed_fraction must be in [0, 1], got {left_handed_fraction!r}")


def clip_label(index, seed=0, balance=True):
    """Label of clip ``index``: 0 forehand, 1 backhand.

    With ``balance`` the clips ``2k`` and ``2k + 1`` get one label each, in a random order drawn
    from ``(seed, k)``, so any prefix of ``n`` clips holds ``floor(n / 2)`` or ``ceil(n / 2)`` of
    each class; without it each label is an independent fair coin drawn from ``(seed, index)``.
    """
    index, seed = _check_index("index", index), _check_index("seed", seed)
    if balance:
        flip = int(np.random.default_rng([seed, index // 2, _LABEL_STREAM]).integers(2))
        return (index % 2) ^ flip
    return int(np.random.default_rng([seed, index, _LABEL_STREAM]).integers(2))


def _muted_colour(rng, sat_max=0.3, val=(0.25, 0.95)):
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, sat_max), rng.uniform(*val))
    return (255.0 * r, 255.0 * g, 255.0 * b)


_SKIN_TONES = np.array([(236, 195, 165), (224, 172, 140), (198, 140, 105), (160, 110, 75),
                        (120, 80, 55), (90, 60, 42)], dtype=np.float64)
_HAIR = np.array([(30, 25, 20), (70, 50, 30), (120, 90, 50), (200, 170, 110), (90, 90, 90)], dtype=np.float64)


def sample_scene(index, label, seed=0, shape=DEFAULT_SHAPE, left_handed_fraction=LEFT_HANDED_FRACTION):
    """Draw the random scene of clip ``index`` with class ``label`` from ``(seed, index)`` alone."""
    index, seed = _check_index("index", index), _check_index("seed", seed)
    if label not in (FOREHAND, BACKHAND):
        raise ValueError(f"label must be 0 (forehand) or 1 (backhand), got {label!r}")
    _check_fraction(left_handed_fraction)
    n_frames, height, width = _check_shape(shape)
    rng = np.random.default_rng([seed, index, _SCENE_STREAM])
    left = bool(rng.random() < left_handed_fraction)
    scale = rng.uniform(0.55, 0.80)
    h = scale * height
    feet_y = rng.uniform(0.88, 0.98) * height
    centre_x = rng.uniform(0.36, 0.64) * width
    # Sweep timing: centre symmetric about the middle frame (time-reversal symmetry of the classes).
    span = n_frames - 1
    frames = rng.uniform(0.2, 0.5) * span
    centre = span / 2 + rng.uniform(-0.2, 0.2) * span
    u_low, u_high = rng.uniform(0.0, 0.1), rng.uniform(0.9, 1.0)
    u_from, u_to = (u_low, u_high) if label == FOREHAND else (u_high, u_low)
    skin = _SKIN_TONES[rng.integers(len(_SKIN_TONES))] * rng.uniform(0.92, 1.05)
    hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.85, 1.15)
    racket = colorsys.hsv_to_rgb(rng.uniform(0.0, 0.05), rng.uniform(0.9, 1.0), rng.uniform(0.85, 1.0))
    body_depth = rng.uniform(2.2, 3.4)
    return Scene(
        label=int(label), left_handed=left,
        centre_x=float(width - 1 - centre_x if left else centre_x), feet_y=float(feet_y),
        height_px=float(h), scale=float(scale),
        swing_start=float(centre - frames / 2), swing_frames=float(frames),
        swing_end=float(centre + frames / 2),
        swing_speed=float(np.rad2deg(_THETA_FROM - _THETA_TO) * (u_high - u_low) / frames),
        sweep_from=float(u_from), sweep_to=float(u_to),
        drift_px=float(rng.uniform(-0.06, 0.06) * h), sway_px=float(rng.uniform(0.0, 0.015) * h),
        sway_phase=float(rng.uniform(0, 2 * np.pi)), sway_period=float(rng.uniform(8.0, 20.0)),
        body_depth=float(body_depth), wall_depth=float(rng.uniform(4.5, 6.5)),
        shoulder_turn=float(rng.uniform(0.3, 0.5)),
        rgb_noise=float(rng.uniform(2.0, 7.0)), depth_noise=float(rng.uniform(1.0, 3.0)),
        gain=float(rng.uniform(0.8, 1.15)), shake_px=float(rng.uniform(0.0, 0.004) * width),
        shirt=_muted_colour(rng), shorts=_muted_colour(rng, val=(0.15, 0.8)),
        skin=tuple(float(c) for c in np.clip(skin, 0, 255)), hair=tuple(float(c) for c in np.clip(hair, 0, 255)),
        wall=_muted_colour(rng, sat_max=0.25, val=(0.35, 0.9)), floor=_muted_colour(rng, sat_max=0.3, val=(0.2, 0.7)),
        racket=tuple(255.0 * c for c in racket), strings=_muted_colour(rng, sat_max=0.15, val=(0.75, 1.0)),
        line_y=float(rng.uniform(0.0, 1.0)), noise_key=int(rng.integers(2**62)),
    )


class _Canvas:
    """A z-buffered RGB canvas over all frames at once: colour (3, F, H, W), depth (F, H, W) in metres.

    Per-frame geometry is given as arrays of shape (F,) (or scalars) and broadcast against the pixel
    grid of the primitive's bounding box over all frames.
    """

    def __init__(self, shape, background_rgb, background_depth):
        f, h, w = shape
        self.rgb = np.empty((3, f, h, w), dtype=np.float32)
        self.rgb[...] = background_rgb[:, None]
        self.z = np.empty((f, h, w), dtype=np.float32)
        self.z[...] = background_depth
        self.height, self.width = h, w

    @staticmethod
    def _f(a):
        return np.asarray(a, dtype=np.float32).reshape(-1, 1, 1)

    def _box(self, xs, ys, reach):
        """Row and column slices covering the points ``xs``, ``ys`` widened by ``reach``, and the
        pixel coordinates of that window, or None when it lies outside the image."""
        reach = float(np.max(reach)) + 1.0
        x0, x1 = int(np.floor(np.min(xs) - reach)), int(np.ceil(np.max(xs) + reach)) + 1
        y0, y1 = int(np.floor(np.min(ys) - reach)), int(np.ceil(np.max(ys) + reach)) + 1
        x0, x1, y0, y1 = max(x0, 0), min(x1, self.width), max(y0, 0), min(y1, self.height)
        if x0 >= x1 or y0 >= y1:
            return None
        gx = np.arange(x0, x1, dtype=np.float32)[None, None, :]
        gy = np.arange(y0, y1, dtype=np.float32)[None, :, None]
        return (slice(y0, y1), slice(x0, x1)), gx, gy

    def _paint(self, window, mask, z, colour):
        """Paint ``colour`` where ``mask`` holds and ``z`` is nearer than what is there."""
        rows, cols = window
        zbuf = self.z[:, rows, cols]
        z = np.broadcast_to(z, zbuf.shape)
        hit = mask & (z < zbuf)
        zbuf[hit] = z[hit]
        for c in range(3):
            self.rgb[c, :, rows, cols][hit] = colour[c]

    def capsule(self, x0, y0, x1, y1, radius, z0, z1, colour):
        """A thick segment (x0, y0)-(x1, y1) of half-width ``radius``, depth linear from z0 to z1."""
        x0, y0, x1, y1 = map(self._f, (x0, y0, x1, y1))
        r = np.maximum(self._f(radius), 0.6)
        box = self._box(np.concatenate([x0, x1]), np.concatenate([y0, y1]), r)
        if box is None:
            return
        window, gx, gy = box
        dx, dy = x1 - x0, y1 - y0
        t = ((gx - x0) * dx + (gy - y0) * dy) / np.maximum(dx * dx + dy * dy, 1e-6)
        np.clip(t, 0.0, 1.0, out=t)
        ex, ey = gx - x0 - t * dx, gy - y0 - t * dy
        mask = ex * ex + ey * ey <= r * r
        self._paint(window, mask, self._f(z0) + t * (self._f(z1) - self._f(z0)), colour)

    def ellipse(self, cx, cy, dir_x, dir_y, ra, rb, z, colour, inner=None, z_tilt=0.0):
        """An ellipse centred (cx, cy) with semi-axis ``ra`` along the unit direction (dir_x, dir_y)
        and ``rb`` across it; with ``inner`` in (0, 1) only the ring outside ``inner`` times it.
        Depth ``z`` plus ``z_tilt`` times the horizontal offset from the centre in units of ``rb``."""
        cx, cy, dir_x, dir_y = map(self._f, (cx, cy, dir_x, dir_y))
        ra, rb = np.maximum(self._f(ra), 0.7), np.maximum(self._f(rb), 0.7)
        box = self._box(cx, cy, np.maximum(ra, rb))
        if box is None:
            return
        window, gx, gy = box
        px, py = gx - cx, gy - cy
        a = (px * dir_x + py * dir_y) / ra
        b = (py * dir_x - px * dir_y) / rb
        q = a * a + b * b
        mask = q <= 1.0
        if inner is not None:
            mask &= q >= inner * inner
        self._paint(window, mask, self._f(z) + self._f(z_tilt) * px / rb, colour)


def _arm_pose(u, h):
    """Hand offset from the dominant shoulder (canonical right-hander), racket direction, hand depth
    offset and racket foreshortening, all functions of the sweep coordinate ``u`` alone."""
    theta = _THETA_FROM + (_THETA_TO - _THETA_FROM) * u
    hand_dx, hand_dy = 0.34 * h * np.cos(theta), 0.30 * h * np.sin(theta)
    front = np.sin(np.pi * np.clip(u, 0.0, 1.0))  # 1 at the contact point in front of the body
    hand_dz = 0.30 - 0.90 * front                 # behind the body at the ends, in front at contact
    psi = theta + np.deg2rad(15.0)
    return hand_dx, hand_dy, np.cos(psi), np.sin(psi), hand_dz, 1.0 - 0.35 * front


def sweep(scene, n_frames):
    """The sweep coordinate ``u`` of each frame: a raised-cosine move from ``sweep_from`` to
    ``sweep_to`` between ``swing_start`` and ``swing_end``."""
    t = np.arange(n_frames, dtype=np.float64)
    s = np.clip((t - scene.swing_start) / scene.swing_frames, 0.0, 1.0)
    s = 0.5 - 0.5 * np.cos(np.pi * s)
    return scene.sweep_from + (scene.sweep_to - scene.sweep_from) * s


def render(scene, shape=DEFAULT_SHAPE):
    """Render ``scene`` to a uint8 clip (4, F, H, W): channels R, G, B, depth (255 = nearest)."""
    n_frames, height, width = _check_shape(shape)
    rng = np.random.default_rng(scene.noise_key)
    h = scene.height_px
    t = np.arange(n_frames, dtype=np.float64)
    # Canonical right-handed geometry; a left-handed scene is mirrored at the end.
    cx0 = width - 1 - scene.centre_x if scene.left_handed else scene.centre_x
    drift = -scene.drift_px if scene.left_handed else scene.drift_px
    shake_x, shake_y = rng.normal(0.0, scene.shake_px, (2, n_frames))
    cx = cx0 + drift * (t / max(n_frames - 1, 1) - 0.5) + shake_x
    fy = scene.feet_y + scene.sway_px * np.sin(2 * np.pi * t / scene.sway_period + scene.sway_phase) + shake_y
    zb, turn = scene.body_depth, scene.shoulder_turn

    # Background: wall, and a floor whose depth follows perspective, z(y) = zb (fy - y_h) / (y - y_h).
    horizon = scene.feet_y - 0.75 * h
    rows = np.arange(height, dtype=np.float64)
    floor_z = zb * (scene.feet_y - horizon) / np.maximum(rows - horizon, 1e-6)
    is_floor = (rows > horizon) & (floor_z < scene.wall_depth)
    bg_z = np.where(is_floor, floor_z, scene.wall_depth).astype(np.float32)
    wall_shade = 1.0 + 0.15 * (0.5 - rows / height)
    bg = np.where(is_floor[None], np.asarray(scene.floor)[:, None], np.asarray(scene.wall)[:, None] * wall_shade)
    floor_rows = np.flatnonzero(is_floor)
    if floor_rows.size:  # a white court line somewhere on the floor
        line = floor_rows[int(scene.line_y * (floor_rows.size - 1))]
        bg[:, line] = 0.5 * bg[:, line] + 0.5 * np.array([240.0, 240.0, 235.0])
    canvas = _Canvas((n_frames, height, width), bg[:, :, None].astype(np.float32), bg_z[:, None])

    # Body, dominant side = image left (x < cx): the turn brings that side nearer.
    hip_y, shoulder_y = fy - 0.47 * h, fy - 0.74 * h
    for side in (-1.0, 1.0):
        canvas.capsule(cx + side * 0.05 * h, hip_y, cx + side * 0.10 * h, fy - 0.02 * h, 0.045 * h,
                       zb + side * 0.3 * turn, zb + side * 0.3 * turn, scene.skin)
    canvas.ellipse(cx, fy - 0.47 * h, 1.0, 0.0, 0.12 * h, 0.09 * h, zb - 0.02, scene.shorts, z_tilt=turn / 1.3)
    canvas.ellipse(cx, fy - 0.62 * h, 0.0, 1.0, 0.17 * h, 0.12 * h, zb - 0.05, scene.shirt, z_tilt=turn)
    canvas.ellipse(cx, fy - 0.87 * h, 1.0, 0.0, 0.065 * h, 0.065 * h, zb - 0.08, scene.skin)
    canvas.ellipse(cx, fy - 0.895 * h, 1.0, 0.0, 0.07 * h, 0.068 * h, zb - 0.02, scene.hair)

    u = sweep(scene, n_frames)
    hand_dx, hand_dy, rx, ry, hand_dz, fore = _arm_pose(u, h)
    # Free arm on the far (non-dominant) shoulder, swinging slightly against the racket arm.
    free_x, free_y = cx + 0.11 * h, shoulder_y
    canvas.capsule(free_x, free_y, free_x + (0.10 - 0.06 * u) * h, free_y + (0.24 - 0.06 * u) * h,
                   0.035 * h, zb + turn, zb + turn - 0.1, scene.skin)
    canvas.capsule(free_x, free_y, free_x + 0.03 * h, free_y + 0.08 * h, 0.045 * h, zb + turn - 0.03,
                   zb + turn - 0.03, scene.shirt)
    # Racket arm on the near (dominant) shoulder: sleeve, arm, handle, frame, strings.
    sx, sy, sz = cx - 0.11 * h, shoulder_y, zb - turn
    hx, hy, hz = sx + hand_dx, sy + hand_dy, zb + hand_dz
    canvas.capsule(sx, sy, sx + 0.25 * hand_dx, sy + 0.25 * hand_dy, 0.048 * h, sz - 0.03,
                   sz + 0.25 * (hz - sz) - 0.03, scene.shirt)
    canvas.capsule(sx, sy, hx, hy, 0.035 * h, sz, hz, scene.skin)
    handle = 0.12 * h * fore
    canvas.capsule(hx, hy, hx + rx * handle, hy + ry * handle, 0.018 * h, hz - 0.04, hz - 0.04, (40.0, 40.0, 45.0))
    head_a, head_b = 0.11 * h * fore, 0.08 * h
    head_x, head_y = hx + rx * (handle + head_a), hy + ry * (handle + head_a)
    canvas.ellipse(head_x, head_y, rx, ry, head_a, head_b, hz - 0.05, scene.racket, inner=0.72)
    canvas.ellipse(head_x, head_y, rx, ry, head_a, head_b, hz - 0.045, scene.strings)

    out = np.empty((CHANNELS, n_frames, height, width), dtype=np.float32)
    np.multiply(canvas.rgb, np.float32(scene.gain), out=out[:3])
    out[3] = (FAR_M - canvas.z) * np.float32(255.0 / (FAR_M - NEAR_M))
    noise = _GAUSS_256[rng.integers(0, 256, out.shape, dtype=np.uint8)]
    noise[:3] *= np.float32(scene.rgb_noise)
    noise[3] *= np.float32(scene.depth_noise)
    out += noise
    out[3][rng.integers(0, 256, canvas.z.shape, dtype=np.uint8) == 0] = 0.0  # depth drop-outs, 1/256
    np.clip(out, 0.0, 255.0, out=out)
    clip = np.rint(out).astype(np.uint8)
    if scene.left_handed:
        clip = np.ascontiguousarray(clip[..., ::-1])
    return clip


def clip_name(index, label):
    """The stored name of clip ``index``, e.g. ``synth_000012_forehand``."""
    return f"synth_{index:06d}_{CLASS_NAMES[label]}"


def make_clip(index, seed=0, shape=DEFAULT_SHAPE, *, balance=True, left_handed_fraction=LEFT_HANDED_FRACTION):
    """Clip ``index`` of the data set ``seed``: ``(clip uint8 (4, F, H, W), label, name, metadata)``.

    Depends only on ``(seed, index, shape, balance, left_handed_fraction)``, not on how many clips
    are generated, so any subset can be regenerated on its own.
    """
    label = clip_label(index, seed, balance)
    scene = sample_scene(index, label, seed, shape, left_handed_fraction)
    return render(scene, shape), label, clip_name(index, label), scene.metadata()


def generate(indices, seed=0, shape=DEFAULT_SHAPE, **kwargs):
    """Yield :func:`make_clip` of each index in ``indices`` (an int ``n`` means ``range(n)``)."""
    if isinstance(indices, (int, np.integer)) and not isinstance(indices, (bool, np.bool_)):
        indices = range(_check_index("n", indices))
    for i in indices:
        yield make_clip(i, seed, shape, **kwargs)


def synthesize(path, n=327, seed=0, shape=DEFAULT_SHAPE, *, balance=True,
               left_handed_fraction=LEFT_HANDED_FRACTION, progress=False):
    """Write clips ``0 .. n-1`` of data set ``seed`` to the ``tuckerref-clips`` HDF5 file ``path``
    (atomically, through :class:`tuckerref.data.store.DatasetWriter`); return its path."""
    from .store import write_generated

    n, seed = _check_index("n", n), _check_index("seed", seed)
    shape = _check_shape(shape)
    _check_fraction(left_handed_fraction)
    attrs = {"generator": "tuckerref.data.synthetic", "seed": seed, "balance": bool(balance),
             "left_handed_fraction": float(left_handed_fraction)}
    source = f"synthetic THETIS-like clips (tuckerref.data.synthetic, seed {seed})"
    clips = generate(n, seed, shape, balance=balance, left_handed_fraction=left_handed_fraction)
    return write_generated(path, (CHANNELS,) + shape, clips, n, progress=progress, desc="synthesizing",
                           class_names=CLASS_NAMES, source=source, attrs=attrs)
