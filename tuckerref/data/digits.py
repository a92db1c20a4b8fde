"""Moving-digit clips: a 10-class video task made from scikit-learn's bundled handwritten digits.

A built-in task on which a network's capacity matters (ten classes instead of the synthetic
THETIS-like set's two), with no download: scikit-learn ships the 1,797 8 x 8 handwritten digits of
the UCI "Optical Recognition of Handwritten Digits" data set (:func:`sklearn.datasets.load_digits`).

Clip of class ``c`` (``c`` in 0..9)
-----------------------------------
- *Appearance*: one image of the handwritten digit ``c``, scaled up (bilinear) to a square of side
  ``SIZE_RANGE`` times the frame height, in a random saturated colour, nearest to the camera.
- *Motion*: the digit travels in a straight line at the class's direction ``36 c`` degrees
  (image coordinates, x right, y down; jittered by up to ``DIRECTION_JITTER_DEG``), at constant
  speed from the first frame to the last, through a random point near the frame's centre.
  Classes ``c`` and ``c + 5`` move along the same line in opposite directions, so the order of
  the frames matters.
- *Clutter*: faint static digits of any class behind it (each in its own colour and depth) and
  small squares drifting in random directions (motion that does not tell the class).
- *Noise*: a smooth background gradient, a global gain, Gaussian sensor noise on every channel.

Channels: 4 (R, G, B, depth; 255 = nearest, as :mod:`tuckerref.data.synthetic`), 3 (R, G, B) or
1 (grey, the mean of R, G, B), chosen by ``channels``.

Held-out images: the images of each class are put in an order drawn from the seed alone, and the
``k``-th clip of a class (clips ``10 k .. 10 k + 9`` hold one clip of each class) shows image ``k``
of that order. So no two of the first ``10 * 174`` clips (174: the smallest class) share a digit
image, and any split of them into training and test clips holds out the test clips' images;
beyond that images are reused in the same order.

Determinism: clip ``i`` depends only on ``(seed, i)`` (and the shape and channel count), through
``numpy.random.default_rng([seed, i, stream])`` and the seed's image orders, so any subset can be
regenerated on its own.
"""
from __future__ import annotations

import colorsys
from functools import lru_cache

import numpy as np

NUM_CLASSES = 10
CLASS_NAMES = tuple(str(c) for c in range(NUM_CLASSES))
DEFAULT_SHAPE = (16, 48, 64)  # (F, H, W): the demo preset's clips
CHANNELS = 4                  # R, G, B, depth
CHANNEL_CHOICES = (1, 3, 4)
SIZE_RANGE = (0.34, 0.44)     # side of the moving digit, as a fraction of the frame height
DIRECTION_JITTER_DEG = 8.0
TRAVEL_RANGE = (0.35, 0.5)    # distance travelled over the clip, as a fraction of the frame's smaller side
STATIC_CLUTTER = 3            # faint still digits per clip
MOVING_CLUTTER = 2            # drifting squares per clip
_NEAR, _FAR = 255.0, 0.0

_LABEL_STREAM, _SCENE_STREAM, _ORDER_STREAM = 0, 1, 2


@lru_cache(maxsize=1)
def digit_images():
    """scikit-learn's bundled 8 x 8 digits: (images float32 (1797, 8, 8) in [0, 1], labels int64 (1797,))."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError("the digits task needs scikit-learn (pip install 'scikit-learn>=1.2')") from None
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0)
    return images, np.asarray(bunch.target, dtype=np.int64)


@lru_cache(maxsize=8)
def image_orders(seed):
    """Per class, the indices into :func:`digit_images` of that class's images in the seed's order."""
    _, labels = digit_images()
    return tuple(np.random.default_rng([seed, c, _ORDER_STREAM]).permutation(np.flatnonzero(labels == c))
                 for c in range(NUM_CLASSES))


def distinct_images():
    """How many clips (from index 0) show pairwise distinct digit images: 10 x the smallest class."""
    _, labels = digit_images()
    return NUM_CLASSES * int(np.bincount(labels, minlength=NUM_CLASSES).min())


def _check_index(name, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_shape(shape):
    """``shape`` as an (F, H, W) tuple of ints, or a ``ValueError`` saying what is wrong."""
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (F, H, W), got {shape!r}") from None
    if len(shape) != 3:
        raise ValueError(f"shape must be three sizes (F, H, W), got {shape!r}")
    f, h, w = shape
    if f < 2 or h < 16 or w < 16:
        raise ValueError(f"shape (F, H, W) = {shape} is too small for a moving digit; need F >= 2, H >= 16, W >= 16")
    return shape


def check_channels(channels):
    if isinstance(channels, (bool, np.bool_)) or channels not in CHANNEL_CHOICES:
        raise ValueError(f"channels must be one of {CHANNEL_CHOICES} (grey; R, G, B; R, G, B, depth), got {channels!r}")
    return int(channels)


def clip_label(index, seed=0):
    """Label of clip ``index``: clips ``10 k .. 10 k + 9`` hold each class once, in an order drawn from
    ``(seed, k)``."""
    index, seed = _check_index("index", index), _check_index("seed", seed)
    block, slot = divmod(index, NUM_CLASSES)
    return int(np.random.default_rng([seed, block, _LABEL_STREAM]).permutation(NUM_CLASSES)[slot])


def clip_image(index, seed=0):
    """Index into :func:`digit_images` of the digit image clip ``index`` shows (see the module docstring)."""
    label = clip_label(index, seed)
    order = image_orders(_check_index("seed", seed))[label]
    return int(order[(index // NUM_CLASSES) % order.size])


def _colour(rng, saturation, value):
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))) * 255.0


def _sample_image(image, x0, y0, side, height, width):
    """``image`` (8 x 8) drawn as a square of ``side`` pixels whose top-left corner is at (x0[t], y0[t]):
    coverage in [0, 1], shape (F, H, W), by bilinear interpolation (zero outside the image)."""
    from scipy.ndimage import map_coordinates

    scale = 8.0 / side
    ys = np.arange(height, dtype=np.float64)
    xs = np.arange(width, dtype=np.float64)
    out = np.empty((len(x0), height, width), dtype=np.float32)
    padded = np.pad(image, 1)  # zero border: the interpolation fades to zero at the digit's edge
    for t, (x, y) in enumerate(zip(x0, y0)):
        r = (ys[:, None] + 0.5 - y) * scale - 0.5 + 1.0
        c = (xs[None, :] + 0.5 - x) * scale - 0.5 + 1.0
        r, c = np.broadcast_arrays(r, c)
        out[t] = map_coordinates(padded, [r, c], order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0, out=out)


def _blend(canvas, coverage, colour, depth):
    """Paint ``colour`` (RGB) and ``depth`` over ``canvas`` (4, F, H, W) with alpha ``coverage`` (F, H, W)."""
    keep = 1.0 - coverage
    for ch, value in enumerate(tuple(colour) + (depth,)):
        canvas[ch] *= keep
        canvas[ch] += np.float32(value) * coverage


def make_clip(index, seed=0, shape=DEFAULT_SHAPE, channels=CHANNELS):
    """Clip ``index`` of data set ``seed``: ``(clip uint8 (channels, F, H, W), label, name, metadata)``.

    Depends only on ``(seed, index, shape, channels)``, not on how many clips are generated.
    """
    index, seed = _check_index("index", index), _check_index("seed", seed)
    n_frames, height, width = check_shape(shape)
    channels = check_channels(channels)
    images, _ = digit_images()
    label, image_index = clip_label(index, seed), clip_image(index, seed)
    rng = np.random.default_rng([seed, index, _SCENE_STREAM])
    t = np.linspace(0.0, 1.0, n_frames) - 0.5 if n_frames > 1 else np.zeros(1)

    # Background: a muted colour with a linear gradient, far away.
    base = _colour(rng, (0.0, 0.35), (0.2, 0.6))
    tilt = rng.uniform(-40.0, 40.0, size=(3, 2))
    gy = np.linspace(-0.5, 0.5, height)[:, None]
    gx = np.linspace(-0.5, 0.5, width)[None, :]
    canvas = np.empty((4, n_frames, height, width), dtype=np.float32)
    for ch in range(3):
        canvas[ch] = (base[ch] + tilt[ch, 0] * gy + tilt[ch, 1] * gx)[None]
    canvas[3] = rng.uniform(_FAR, 40.0)

    # Static clutter: faint digits of any class at random places, behind the moving digit.
    for _ in range(STATIC_CLUTTER):
        side = rng.uniform(*SIZE_RANGE) * height
        x, y = rng.uniform(-0.2 * side, width - 0.8 * side), rng.uniform(-0.2 * side, height - 0.8 * side)
        cover = _sample_image(images[rng.integers(len(images))], np.full(n_frames, x), np.full(n_frames, y),
                              side, height, width) * np.float32(rng.uniform(0.25, 0.5))
        _blend(canvas, cover, _colour(rng, (0.2, 0.8), (0.5, 1.0)), rng.uniform(60.0, 140.0))

    # Moving clutter: small squares drifting in random directions.
    for _ in range(MOVING_CLUTTER):
        side = rng.uniform(0.08, 0.15) * height
        angle, travel = rng.uniform(0, 2 * np.pi), rng.uniform(*TRAVEL_RANGE) * min(height, width)
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        x0 = cx + travel * np.cos(angle) * t - side / 2
        y0 = cy + travel * np.sin(angle) * t - side / 2
        square = np.ones((8, 8), dtype=np.float32)
        cover = _sample_image(square, x0, y0, side, height, width) * np.float32(rng.uniform(0.4, 0.8))
        _blend(canvas, cover, _colour(rng, (0.2, 1.0), (0.4, 1.0)), rng.uniform(80.0, 180.0))

    # The digit: class direction, constant speed, through a point near the centre, fully inside the frame.
    side = rng.uniform(*SIZE_RANGE) * height
    direction = np.deg2rad(360.0 * label / NUM_CLASSES + rng.uniform(-DIRECTION_JITTER_DEG, DIRECTION_JITTER_DEG))
    travel = rng.uniform(*TRAVEL_RANGE) * min(height, width)
    dx, dy = travel * np.cos(direction), travel * np.sin(direction)
    # centre range that keeps both ends of the path inside the frame
    lo_x, hi_x = side / 2 + abs(dx) / 2, width - side / 2 - abs(dx) / 2
    lo_y, hi_y = side / 2 + abs(dy) / 2, height - side / 2 - abs(dy) / 2
    cx = rng.uniform(lo_x, max(lo_x, hi_x))
    cy = rng.uniform(lo_y, max(lo_y, hi_y))
    x0, y0 = cx + dx * t - side / 2, cy + dy * t - side / 2
    cover = _sample_image(images[image_index], x0, y0, side, height, width)
    colour = _colour(rng, (0.6, 1.0), (0.7, 1.0))
    _blend(canvas, cover, colour, _NEAR - rng.uniform(0.0, 40.0))

    gain = rng.uniform(0.8, 1.15)
    rgb_noise, depth_noise = rng.uniform(4.0, 12.0), rng.uniform(2.0, 8.0)
    canvas[:3] *= np.float32(gain)
    noise = rng.standard_normal(canvas.shape, dtype=np.float32)
    noise[:3] *= np.float32(rgb_noise)
    noise[3] *= np.float32(depth_noise)
    canvas += noise
    if channels == 1:
        canvas = canvas[:3].mean(axis=0, keepdims=True)
    elif channels == 3:
        canvas = canvas[:3]
    np.clip(canvas, 0.0, 255.0, out=canvas)
    clip = np.ascontiguousarray(np.rint(canvas).astype(np.uint8))
    meta = {"image_index": image_index, "direction_deg": float(np.rad2deg(direction)), "travel_px": float(travel),
            "size_px": float(side), "centre_x": float(cx), "centre_y": float(cy), "gain": float(gain),
            "rgb_noise": float(rgb_noise), "depth_noise": float(depth_noise)}
    return clip, label, clip_name(index, label), meta


def clip_name(index, label):
    """The stored name of clip ``index``, e.g. ``digits_000012_7``."""
    return f"digits_{index:06d}_{CLASS_NAMES[label]}"


def generate(indices, seed=0, shape=DEFAULT_SHAPE, channels=CHANNELS):
    """Yield :func:`make_clip` of each index in ``indices`` (an int ``n`` means ``range(n)``)."""
    if isinstance(indices, (int, np.integer)) and not isinstance(indices, (bool, np.bool_)):
        indices = range(_check_index("n", indices))
    for i in indices:
        yield make_clip(i, seed, shape, channels)


def write_digits(path, n=1000, seed=0, shape=DEFAULT_SHAPE, channels=CHANNELS, progress=False):
    """Write clips ``0 .. n-1`` of data set ``seed`` to the ``tuckerref-clips`` HDF5 file ``path``
    (atomically, through :class:`tuckerref.data.store.DatasetWriter`); return its path."""
    from .store import write_generated

    n, seed = _check_index("n", n), _check_index("seed", seed)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    shape, channels = check_shape(shape), check_channels(channels)
    digit_images()  # fail early without scikit-learn
    # distinct_images: how many clips, from the first, show pairwise distinct digit images
    attrs = {"generator": "tuckerref.data.digits", "seed": seed, "distinct_images": min(n, distinct_images())}
    source = f"moving handwritten digits (tuckerref.data.digits, scikit-learn load_digits, seed {seed})"
    clips = generate(n, seed, shape, channels)
    return write_generated(path, (channels,) + shape, clips, n, progress=progress, desc="rendering",
                           class_names=CLASS_NAMES, source=source, attrs=attrs)


__all__ = ["make_clip", "generate", "write_digits", "clip_label", "clip_image", "digit_images", "image_orders",
           "distinct_images", "check_shape", "check_channels", "CLASS_NAMES", "DEFAULT_SHAPE", "CHANNELS",
           "NUM_CLASSES"]
