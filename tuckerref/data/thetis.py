"""THETIS importer: the archive's RGB and depth AVI files into the paper's clip data set (its Section 2.1;
docs/method.md section 10).

Per annotated video: the RGB file ``VIDEO_RGB/<shot>/pN_<short>_sK.avi`` and its depth partner
``VIDEO_Depth/<shot>/pN_<short>_depth_sK.avi`` are paired by name (never by sorted position),
both decoded with PyAV, and 28 consecutive frames are taken whose first has the 1-based frame
number ``int(mid * fps) - 13`` (0-based index ``int(mid * fps) - 14``), with each file's own frame
rate. Every frame is scaled down by 4 per dimension with nearest-neighbour sampling
``src = floor(dst * in / out)``; RGB keeps its 3 channels, depth becomes one grey channel, the
ITU-R BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` of the decoded RGB frame rounded to the
nearest integer; channels are stored as uint8 in the order R, G, B, depth
(:data:`tuckerref.data.store.CHANNEL_ORDER`).

Nothing is dropped silently: every annotation row or video that does not become a clip is
returned as a :class:`Skipped` record with its file name and reason.
"""
from __future__ import annotations

import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import atomic_path
from .store import DatasetWriter

RGB_DIR, DEPTH_DIR = "VIDEO_RGB", "VIDEO_Depth"
DEFAULT_SHOTS = ("forehand_flat", "backhand")  # label = position: forehand_flat 0, backhand 1
LUMA_601 = (299, 587, 114)  # BT.601 luma weights in thousandths: Y = 0.299 R + 0.587 G + 0.114 B

# Reasons a clip is not made (the report's vocabulary).
IN_SKIP_LIST = "in the skip list"
NO_MIDPOINT = "no valid mid-point"
DUPLICATE = "duplicate annotation"
NO_SUCH_FILE = "annotated file does not exist"
MISSING_PARTNER = "missing partner"
UNDECODABLE = "undecodable file"
COUNT_MISMATCH = "RGB/depth frame-count mismatch"
OUTSIDE = "window outside the video"
NOT_ANNOTATED = "not annotated"


@dataclass(frozen=True)
class ClipSpec:
    """How a clip is cut from a video; the defaults are the paper's (docs/method.md section 10).

    ``frames`` consecutive frames from 0-based index ``int(mid * fps) - offset``; frames of
    ``frame_size`` (H, W) are sampled down to ``frame_size // scale`` (other sizes are sampled to the
    same output size by the same nearest-neighbour rule).
    """
    frames: int = 28
    offset: int = 14
    scale: int = 4
    frame_size: tuple = (480, 640)

    def __post_init__(self):
        if self.frames < 1 or self.scale < 1 or len(self.frame_size) != 2 or min(self.frame_size) < self.scale:
            raise ValueError(f"invalid ClipSpec {self}: frames and scale must be >= 1 and "
                             f"frame_size two sizes of at least scale")

    @property
    def out_size(self):
        return (self.frame_size[0] // self.scale, self.frame_size[1] // self.scale)

    @property
    def clip_shape(self):
        return (4, self.frames) + self.out_size

    def start(self, mid, fps):
        """0-based index of the window's first frame (1-based frame number ``int(mid * fps) - offset + 1``)."""
        return int(mid * fps) - self.offset


@dataclass(frozen=True)
class Annotation:
    """One annotation row: the named (depth or RGB) file, its mid-point in seconds, and where it came from."""
    file: str
    mid: float | None  # None when the mid-point column is empty or not a number
    source: str
    line: int


@dataclass(frozen=True)
class Skipped:
    """A clip that was not made: the file name it concerns, one of the module's reasons, and details."""
    name: str
    reason: str
    detail: str = ""

    def __str__(self):
        return f"{self.name}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class VideoPair:
    """The RGB and depth files of one recording (either may be missing) and its shot's label."""
    key: str
    shot: str
    label: int
    rgb: Path | None = None
    depth: Path | None = None


@dataclass
class ImportResult:
    """What :func:`import_thetis` made: the output path, the clip names and every skipped clip."""
    path: Path | None
    names: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def report_lines(self):
        lines = [f"{len(self.names)} clips made, {len(self.skipped)} skipped"]
        return lines + [f"  skipped {s}" for s in self.skipped]


class NoClipsError(ValueError):
    """No clip could be made; ``result`` holds the report of why."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


def pair_key(file_name):
    """The name shared by a recording's RGB and depth files: the stem without its last ``_depth``.

    ``p13_foreflat_s2.avi`` and ``p13_foreflat_depth_s2.avi`` both give ``p13_foreflat_s2``.
    """
    stem = Path(file_name).stem
    i = stem.rfind("_depth")
    return stem if i < 0 else stem[:i] + stem[i + len("_depth"):]


def natural_key(name):
    """Sort key putting ``p2`` before ``p10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _parse_mid(text):
    try:
        mid = float(text)
    except ValueError:
        return None
    return mid if np.isfinite(mid) and mid >= 0 else None


def read_annotations(path):
    """Parse an annotation file: ``;``-separated, no header, ``file;mid-point seconds[;ignored...]``.

    Columns after the second are ignored whatever their format (``2,306,398,000``, ``2268932``).
    Blank lines are skipped; a row with an empty or non-numeric mid-point gets ``mid=None`` (it is
    reported, not dropped). Raises ``ValueError`` naming the file for a missing file or a row
    without a file name.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"annotation file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"annotation file {path} cannot be read: {exc}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cols = [c.strip() for c in line.split(";")]
        if not cols[0]:
            raise ValueError(f"annotation file {path} line {number} has no file name: {line!r}")
        rows.append(Annotation(cols[0], _parse_mid(cols[1]) if len(cols) > 1 else None, str(path), number))
    return rows


def _list_videos(directory):
    if not directory.is_dir():
        return []
    return [name for name in os.listdir(directory) if name.lower().endswith(".avi")]


def find_videos(root, shots=DEFAULT_SHOTS):
    """Index ``ROOT/VIDEO_RGB/<shot>/`` and ``ROOT/VIDEO_Depth/<shot>/`` by :func:`pair_key`.

    Returns ``{key: VideoPair}``; the label of a shot is its position in ``shots``. Raises
    ``ValueError`` when a shot has neither directory (a typo in the shot name, or a wrong ROOT).
    """
    root = Path(root)
    pairs = {}
    for label, shot in enumerate(shots):
        dirs = {"rgb": root / RGB_DIR / shot, "depth": root / DEPTH_DIR / shot}
        if not any(d.is_dir() for d in dirs.values()):
            raise ValueError(f"THETIS root {root} has neither {RGB_DIR}/{shot} nor {DEPTH_DIR}/{shot}")
        for side, directory in dirs.items():
            for name in _list_videos(directory):
                key = pair_key(name)
                pair = pairs.setdefault(key, VideoPair(key, shot, label))
                if pair.shot != shot or getattr(pair, side) is not None:
                    other = getattr(pair, side) or getattr(pair, "rgb" if side == "depth" else "depth")
                    raise ValueError(f"THETIS root {root}: {directory / name} and {other} "
                                     f"both map to the recording {key!r}")
                setattr(pair, side, directory / name)
    return pairs


def nearest_indices(size_in, size_out):
    """Source indices of nearest-neighbour down-sampling: ``src = floor(dst * in / out)``, exactly."""
    return (np.arange(size_out, dtype=np.int64) * size_in) // size_out


def luma601(rgb):
    """ITU-R BT.601 luma of uint8 RGB (..., 3): ``0.299 R + 0.587 G + 0.114 B`` rounded half up, as uint8.

    Computed exactly in integers: ``(299 R + 587 G + 114 B + 500) // 1000``.
    """
    rgb = rgb.astype(np.int32)
    y = rgb[..., 0] * LUMA_601[0] + rgb[..., 1] * LUMA_601[1] + rgb[..., 2] * LUMA_601[2]
    return ((y + 500) // 1000).astype(np.uint8)


@dataclass
class DecodedWindow:
    """A decoded video's frame count, frame rate, window start and window frames (F, h, w, 3) or None."""
    count: int
    fps: float
    start: int
    frames: np.ndarray | None


def decode_window(path, mid, spec=ClipSpec()):
    """Decode ``path`` with PyAV, counting all frames and keeping the down-sampled window frames.

    The window is ``spec.frames`` frames from 0-based index ``int(mid * fps) - spec.offset`` with the
    file's own frame rate; ``frames`` is None when the window does not lie inside the video.
    Raises ``av.FFmpegError`` / ``OSError`` / ``ValueError`` for an undecodable file.
    """
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        rate = stream.guessed_rate or stream.average_rate or stream.base_rate
        if not rate or rate <= 0:
            raise ValueError("no frame rate")
        fps = float(rate)
        start = spec.start(mid, fps)
        stop = start + spec.frames
        window = np.empty((spec.frames,) + spec.out_size + (3,), dtype=np.uint8)
        shape = rows = cols = None
        count = 0
        for frame in container.decode(stream):
            if start <= count < stop:
                image = frame.to_ndarray(format="rgb24")
                if image.shape[:2] != shape:
                    shape = image.shape[:2]
                    rows = nearest_indices(image.shape[0], spec.out_size[0])
                    cols = nearest_indices(image.shape[1], spec.out_size[1])
                window[count - start] = image[rows][:, cols]
            count += 1
    if count == 0:
        raise ValueError("no decodable frame")
    inside = start >= 0 and stop <= count
    return DecodedWindow(count, fps, start, window if inside else None)


def make_clip(pair, mid, spec=ClipSpec()):
    """Cut one clip (4, F, h, w) uint8 from a complete :class:`VideoPair` at mid-point ``mid`` seconds.

    Returns ``(clip, meta)`` or ``(None, Skipped)`` for an undecodable file, an RGB/depth frame-count
    mismatch, or a window outside either video.
    """
    decoded = {}
    for side in ("rgb", "depth"):
        path = getattr(pair, side)
        try:
            decoded[side] = decode_window(path, mid, spec)
        except Exception as exc:  # PyAV raises FFmpegError subclasses, OSError or ValueError
            return None, Skipped(path.name, UNDECODABLE, f"{type(exc).__name__}: {exc}")
    rgb, depth = decoded["rgb"], decoded["depth"]
    if rgb.count != depth.count:
        return None, Skipped(pair.rgb.name, COUNT_MISMATCH,
                             f"{rgb.count} frames in {pair.rgb.name}, {depth.count} in {pair.depth.name}")
    for side, d in decoded.items():
        if d.frames is None:
            path = getattr(pair, side)
            return None, Skipped(path.name, OUTSIDE,
                                 f"frames {d.start}..{d.start + spec.frames - 1} (0-based) of {d.count} "
                                 f"at mid-point {mid} s, {d.fps:g} fps")
    clip = np.empty(spec.clip_shape, dtype=np.uint8)
    clip[:3] = rgb.frames.transpose(3, 0, 1, 2)
    clip[3] = luma601(depth.frames)
    meta = {"shot": pair.shot, "mid": float(mid), "fps_rgb": rgb.fps, "fps_depth": depth.fps,
            "start": int(rgb.start), "start_depth": int(depth.start), "video_frames": int(rgb.count),
            "rgb_file": pair.rgb.name, "depth_file": pair.depth.name}
    return clip, meta


def _make_clip_job(job):
    pair, mid, spec = job
    return make_clip(pair, mid, spec)


def plan_clips(root, annotations, *, shots=DEFAULT_SHOTS, skip=()):
    """Match annotation rows to video pairs by name.

    ``annotations`` is an iterable of annotation file paths (rows of all of them are pooled; the
    shot of a row is the directory its file lies in). Returns ``(jobs, skipped)`` with ``jobs`` a
    list of ``(VideoPair, mid)`` in shot then natural name order, and ``skipped`` every row or video
    that will not become a clip, with its reason.
    """
    pairs = find_videos(root, shots)
    existing = {p.name for pair in pairs.values() for p in (pair.rgb, pair.depth) if p is not None}
    skip_keys = {pair_key(name) for name in skip}
    unknown = sorted(name for name in skip if pair_key(name) not in pairs)
    if unknown:
        raise ValueError(f"skip-list entries {unknown} match no RGB or depth file under {Path(root)} "
                         f"for shots {', '.join(shots)}")
    skipped, chosen = [], {}
    rows = [row for path in annotations for row in read_annotations(path)]
    for row in rows:
        where = f"{Path(row.source).name} line {row.line}"
        key = pair_key(row.file)
        if row.file not in existing:
            skipped.append(Skipped(row.file, NO_SUCH_FILE, f"{where}; not under {RGB_DIR} or {DEPTH_DIR} "
                                                           f"for shots {', '.join(shots)}"))
        elif key in chosen:
            skipped.append(Skipped(row.file, DUPLICATE, f"{where}; first given in {chosen[key][1]}"))
        elif row.mid is None:
            skipped.append(Skipped(row.file, NO_MIDPOINT, where))
            chosen[key] = (None, where)
        elif key in skip_keys:
            skipped.append(Skipped(row.file, IN_SKIP_LIST, where))
            chosen[key] = (None, where)
        else:
            pair = pairs[key]
            if pair.rgb is None or pair.depth is None:
                have, side = (pair.rgb, "depth") if pair.depth is None else (pair.depth, "RGB")
                skipped.append(Skipped(have.name, MISSING_PARTNER, f"no {side} file for {key!r}"))
                chosen[key] = (None, where)
            else:
                chosen[key] = (row.mid, where)
    for key, pair in pairs.items():
        if key not in chosen:
            name = (pair.depth or pair.rgb).name
            skipped.append(Skipped(name, NOT_ANNOTATED, pair.shot))
    jobs = [(pairs[key], mid) for key, (mid, _) in chosen.items() if mid is not None]
    jobs.sort(key=lambda job: (job[0].label, natural_key(job[0].key)))
    return jobs, skipped


def import_thetis(root, annotations, out, *, shots=DEFAULT_SHOTS, skip=(), spec=ClipSpec(),
                  workers=None, progress=True):
    """Build the paper's clip data set from a THETIS tree into ``out`` (HDF5, written atomically).

    Decoding runs over files in ``workers`` processes (default: the CPU count; 1 decodes in this
    process) with a tqdm progress bar. Returns an :class:`ImportResult`; raises
    :class:`NoClipsError` (a ``ValueError``) without writing when no clip could be made, and
    ``ValueError`` when ``out`` cannot be written.
    """
    from tqdm import tqdm

    jobs, skipped = plan_clips(root, annotations, shots=shots, skip=skip)
    result = ImportResult(None, [], skipped)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    tasks = [(pair, mid, spec) for pair, mid in jobs]
    out = Path(out)
    try:
        with DatasetWriter(out, spec.clip_shape, class_names=tuple(shots), source=f"THETIS {Path(root)}",
                           attrs={"spec": {"frames": spec.frames, "offset": spec.offset, "scale": spec.scale,
                                           "frame_size": list(spec.frame_size)}}) as writer:
            pool = ProcessPoolExecutor(workers) if workers > 1 else None
            try:
                made = pool.map(_make_clip_job, tasks) if pool else map(_make_clip_job, tasks)
                for (pair, _), (clip, meta) in tqdm(zip(jobs, made), total=len(jobs), desc="THETIS clips",
                                                    unit="clip", disable=not progress):
                    if clip is None:
                        result.skipped.append(meta)
                    else:
                        writer.append(clip, pair.label, pair.key, **meta)
                        result.names.append(pair.key)
            finally:
                if pool:
                    pool.shutdown(cancel_futures=True)
            if not result.names:
                raise NoClipsError(f"no clip could be made from {root} ({len(result.skipped)} skipped)", result)
            writer.attrs["skipped"] = [[s.name, s.reason, s.detail] for s in result.skipped]
    except OSError as exc:
        raise ValueError(f"cannot write {out}: {exc}") from None
    result.path = out
    return result


def write_template(root, out, *, shots=DEFAULT_SHOTS):
    """Write the annotation template ``out``: one ``<file name>;`` row per recording (mid-point empty).

    Rows name the depth file (the RGB file where no depth file exists), in shot then natural order,
    as the authors' hand-filled files do. Returns the number of rows; written atomically.
    """
    pairs = sorted(find_videos(root, shots).values(), key=lambda p: (p.label, natural_key(p.key)))
    if not pairs:
        raise ValueError(f"no .avi files under {Path(root)} for shots {', '.join(shots)}")
    out = Path(out)
    try:
        with atomic_path(out) as tmp:
            tmp.write_text("".join(f"{(p.depth or p.rgb).name};\n" for p in pairs), encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot write {out}: {exc}") from None
    return len(pairs)
