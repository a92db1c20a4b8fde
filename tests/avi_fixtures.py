"""Small real AVI files for the THETIS importer tests: lossless PNG-coded frames that encode their own index.

RGB frame ``i`` of a video: R = 5 i everywhere, G = column mod 256, B = row mod 256.
Depth frame ``i``: R = (3 i + row) mod 256, G = 2 column mod 256, B = 200 (coloured on purpose,
so that the grey conversion is exercised).
"""
from fractions import Fraction

import av
import numpy as np

HEIGHT, WIDTH = 480, 640


def rgb_frame(i, height=HEIGHT, width=WIDTH):
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = (5 * i) % 256
    frame[..., 1] = (np.arange(width) % 256)[None, :]
    frame[..., 2] = (np.arange(height) % 256)[:, None]
    return frame


def depth_frame(i, height=HEIGHT, width=WIDTH):
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = ((3 * i + np.arange(height)) % 256)[:, None]
    frame[..., 1] = ((2 * np.arange(width)) % 256)[None, :]
    frame[..., 2] = 200
    return frame


def write_avi(path, make_frame, count, fps):
    """Write ``count`` frames ``make_frame(i)`` to a lossless (PNG-coded) AVI at frame rate ``fps``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        # zlib level 1: still lossless, and about twice as quick to write and read back as the default
        stream = container.add_stream("png", rate=Fraction(fps).limit_denominator(1001),
                                      options={"compression_level": "1"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "rgb24"
        for i in range(count):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(make_frame(i), format="rgb24")))
        container.mux(stream.encode())
    return path
