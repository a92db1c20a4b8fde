"""The HDF5 clip data-set format shared by the synthetic generator, the THETIS importer and training.

Layout of a ``tuckerref-clips`` file (version 1):

- ``clips``  (N, C, F, H, W) uint8, chunked one clip per chunk, resizable along N;
- ``labels`` (N,) int64, class indices into ``class_names``;
- ``names``  (N,) variable-length UTF-8 strings, unique per file;
- ``meta/<key>`` (N,) one optional per-clip scalar dataset per metadata key;
- root attributes ``format = "tuckerref-clips"``, ``version``, ``channel_order`` (JSON list,
  ``R, G, B, depth`` for 4-channel clips), ``class_names`` (JSON list), ``source`` (free text) and
  ``attrs`` (JSON object of any further attributes given to the writer).

Clips are stored as uint8 and returned by :meth:`ClipDataset.batch` as float32 scaled to [0, 1]
(value / 255), the paper's input scaling (docs/method.md section 10).
"""
from __future__ import annotations

import hashlib
import json
import numbers
from pathlib import Path

import h5py
import numpy as np

from ..io import atomic_path, open_h5

FORMAT = "tuckerref-clips"
VERSION = 1
CHANNEL_ORDER = ("R", "G", "B", "depth")
_RESERVED_ATTRS = ("format", "version", "channel_order", "class_names", "source")
_GROW = 64  # clips added to the resizable dataset's length at a time
_STR = h5py.string_dtype(encoding="utf-8")


def default_channel_order(channels):
    """Channel names for ``channels`` channels: R, G, B, depth for 4, R, G, B for 3, else c0, c1, ..."""
    if channels in (3, 4):
        return CHANNEL_ORDER[:channels]
    return tuple(f"c{i}" for i in range(channels))


def _clip_shape(clip_shape):
    try:
        shape = tuple(int(s) for s in clip_shape)
    except TypeError:
        raise ValueError(f"clip_shape must be (C, F, H, W), got {clip_shape!r}") from None
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"clip_shape must be four positive sizes (C, F, H, W), got {clip_shape!r}")
    return shape


def _meta_kind(key, value):
    """Storage dtype of a per-clip metadata scalar, chosen from its first value."""
    if isinstance(value, (bool, np.bool_)):
        return np.bool_
    if isinstance(value, numbers.Integral):
        return np.int64
    if isinstance(value, numbers.Real):
        return np.float64
    if isinstance(value, str):
        return _STR
    raise ValueError(f"metadata {key!r} must be a scalar (bool, int, float or str), got {type(value).__name__}")


def _attrs_json(attrs):
    clash = sorted(set(attrs) & set(_RESERVED_ATTRS + ("attrs",)))
    if clash:
        raise ValueError(f"attrs may not set the reserved attribute(s) {clash}")
    try:
        return json.dumps(attrs)
    except TypeError as exc:
        raise ValueError(f"attrs must be JSON-serialisable: {exc}") from None


class DatasetWriter:
    """Write a ``tuckerref-clips`` file clip by clip; a context manager.

    The file is built under a temporary name beside ``path`` and renamed over it only when the
    ``with`` block ends without an exception; on an exception the temporary file is removed and
    ``path`` is left untouched.
    """

    def __init__(self, path, clip_shape, *, class_names=("forehand", "backhand"), source="", attrs=None):
        self.path = Path(path)
        self.clip_shape = _clip_shape(clip_shape)
        self.class_names = [str(c) for c in class_names]
        if not self.class_names:
            raise ValueError("class_names must name at least one class")
        self.source = str(source)
        self.attrs = dict(attrs or {})  # may be extended until the ``with`` block ends
        _attrs_json(self.attrs)
        self._labels, self._names, self._name_set = [], [], set()
        self._meta = None  # key -> (dtype, list of values), fixed by the first append
        self._atomic = self._file = self._clips = None

    def __len__(self):
        return len(self._labels)

    def __enter__(self):
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        try:
            self._file = h5py.File(tmp, "w")
            self._clips = self._file.create_dataset(
                "clips", shape=(0,) + self.clip_shape, maxshape=(None,) + self.clip_shape,
                chunks=(1,) + self.clip_shape, dtype=np.uint8, compression="lzf")
        except BaseException as exc:
            self._abort(exc)
            raise
        return self

    def append(self, clip, label, name, **meta):
        """Add one uint8 clip (C, F, H, W) with its integer ``label``, unique ``name`` and scalar ``meta``."""
        if self._clips is None:
            raise ValueError(f"DatasetWriter for {self.path} is not open; use it as a context manager")
        clip = np.asarray(clip)
        if clip.dtype != np.uint8:
            raise ValueError(f"clip {name!r} must be uint8, got {clip.dtype}")
        if clip.shape != self.clip_shape:
            raise ValueError(f"clip {name!r} has shape {clip.shape}, expected {self.clip_shape}")
        if not isinstance(label, numbers.Integral) or not 0 <= int(label) < len(self.class_names):
            raise ValueError(f"label of clip {name!r} must be an integer in [0, {len(self.class_names)}), got {label!r}")
        name = str(name)
        if name in self._name_set:
            raise ValueError(f"clip name {name!r} appears twice in {self.path}")
        self._check_meta(name, meta)
        n = len(self._labels)
        if n == self._clips.shape[0]:
            self._clips.resize(n + _GROW, axis=0)
        self._clips[n] = clip
        self._labels.append(int(label))
        self._names.append(name)
        self._name_set.add(name)
        for key, value in meta.items():
            self._meta[key][1].append(value)

    def _check_meta(self, name, meta):
        if self._meta is None:
            self._meta = {key: (_meta_kind(key, value), []) for key, value in meta.items()}
        if set(meta) != set(self._meta):
            raise ValueError(f"clip {name!r} has metadata keys {sorted(meta)}, "
                             f"expected the same keys as the first clip: {sorted(self._meta)}")
        for key, value in meta.items():
            if _meta_kind(key, value) is not self._meta[key][0] and not (
                    self._meta[key][0] is np.float64 and isinstance(value, numbers.Real)):
                raise ValueError(f"metadata {key!r} of clip {name!r} is {type(value).__name__}, "
                                 f"unlike the first clip's")

    def _finish(self):
        f, n = self._file, len(self._labels)
        self._clips.resize(n, axis=0)
        f.create_dataset("labels", data=np.asarray(self._labels, dtype=np.int64).reshape(n))
        f.create_dataset("names", data=np.asarray(self._names, dtype=object).reshape(n), dtype=_STR)
        group = f.create_group("meta")
        for key, (dtype, values) in (self._meta or {}).items():
            data = np.asarray(values, dtype=object if dtype is _STR else dtype).reshape(n)
            group.create_dataset(key, data=data, dtype=dtype)
        f.attrs["format"] = FORMAT
        f.attrs["version"] = VERSION
        f.attrs["channel_order"] = json.dumps(list(default_channel_order(self.clip_shape[0])))
        f.attrs["class_names"] = json.dumps(self.class_names)
        f.attrs["source"] = self.source
        f.attrs["attrs"] = _attrs_json(self.attrs)

    def _abort(self, exc):
        if self._file is not None:
            self._file.close()
        self._file = self._clips = None
        atomic, self._atomic = self._atomic, None
        atomic.__exit__(type(exc), exc, exc.__traceback__)

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            try:
                self._finish()
                self._file.close()
            except BaseException as err:
                self._abort(err)
                raise
            self._file = self._clips = None
            atomic, self._atomic = self._atomic, None
            atomic.__exit__(None, None, None)  # renames the temporary file over self.path
        else:
            self._abort(exc)
        return False


def write_generated(path, clip_shape, clips, n, *, progress=False, desc="writing", **writer_kwargs):
    """Write ``n`` generated clips to ``path`` (atomically, through :class:`DatasetWriter`); return its path.

    ``clips`` yields ``(clip, label, name, per-clip metadata dict)``, as the built-in generators
    (:mod:`.synthetic`, :mod:`.digits`) do; ``progress`` shows a tqdm bar labelled ``desc``;
    ``writer_kwargs`` go to :class:`DatasetWriter` (class names, source, attributes).
    """
    if progress:
        from tqdm import tqdm
        clips = tqdm(clips, total=n, desc=desc, unit="clip")
    with DatasetWriter(path, clip_shape, **writer_kwargs) as writer:
        for clip, label, name, meta in clips:
            writer.append(clip, label, name, **meta)
    return writer.path


def write_dataset(path, clips, labels, names, *, metadata=None, **writer_kwargs):
    """Write whole arrays at once: ``clips`` (N, C, F, H, W) uint8, ``labels`` (N,), ``names`` (N,).

    ``metadata`` maps a key to N per-clip scalars; ``writer_kwargs`` go to :class:`DatasetWriter`.
    """
    n = len(clips)
    if len(labels) != n or len(names) != n:
        raise ValueError(f"{n} clips need {n} labels and names, got {len(labels)} and {len(names)}")
    metadata = dict(metadata or {})
    for key, values in metadata.items():
        if len(values) != n:
            raise ValueError(f"metadata {key!r} has {len(values)} values for {n} clips")
    if n:
        shape = np.shape(clips[0])
    elif np.ndim(clips) == 5:
        shape = np.shape(clips)[1:]
    else:
        raise ValueError("an empty data set needs clips shaped (0, C, F, H, W) to know its clip shape")
    with DatasetWriter(path, shape, **writer_kwargs) as writer:
        for i in range(n):
            writer.append(clips[i], labels[i], names[i],
                          **{key: _scalar(values[i]) for key, values in metadata.items()})
    return Path(path)


def _scalar(value):
    return value.item() if isinstance(value, np.generic) else value


class ClipDataset:
    """Lazy reader of a ``tuckerref-clips`` file; also a context manager.

    Labels, names and metadata are read at opening (they are small); clips are read only by
    :meth:`batch`. A missing, truncated, foreign or inconsistent file raises ``ValueError`` naming it.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._file = open_h5(self.path, "clip data set")
        try:
            self._load()
        except BaseException:
            self._file.close()
            raise

    def _bad(self, why):
        return ValueError(f"clip data set {self.path} {why}")

    def _load(self):
        f = self._file
        if f.attrs.get("format") != FORMAT:
            raise self._bad(f"is not a {FORMAT} file (format attribute {f.attrs.get('format')!r})")
        version = int(f.attrs.get("version", -1))
        if not 1 <= version <= VERSION:
            raise self._bad(f"has unsupported version {version} (this reader knows 1..{VERSION})")
        try:
            clips, labels, names = f["clips"], f["labels"], f["names"]
            if labels.dtype.kind not in "iu":
                raise self._bad(f"has labels of dtype {labels.dtype}; labels must be integer class indices")
            self.labels = np.asarray(labels[()], dtype=np.int64)
            self.names = [str(s) for s in names.asstr()[()]]
            self.class_names = list(json.loads(f.attrs["class_names"]))
            self.channel_order = tuple(json.loads(f.attrs["channel_order"]))
            self.source = str(f.attrs.get("source", ""))
            extra = json.loads(f.attrs.get("attrs", "{}"))
            self.metadata = {key: self._read_meta(ds) for key, ds in f.get("meta", {}).items()}
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise self._bad(f"is damaged or incomplete: {exc}") from None
        if clips.ndim != 5 or clips.dtype != np.uint8:
            raise self._bad(f"has clips of shape {clips.shape} and dtype {clips.dtype}, expected (N, C, F, H, W) uint8")
        n = clips.shape[0]
        self._clips = clips
        self.clip_shape = tuple(int(s) for s in clips.shape[1:])
        if self.labels.shape != (n,) or len(self.names) != n:
            raise self._bad(f"is inconsistent: {n} clips, {self.labels.shape[0] if self.labels.ndim else 0} "
                            f"labels, {len(self.names)} names")
        for key, values in self.metadata.items():
            if values.shape != (n,):
                raise self._bad(f"is inconsistent: metadata {key!r} has shape {values.shape} for {n} clips")
        if len(self.channel_order) != self.clip_shape[0]:
            raise self._bad(f"is inconsistent: channel_order {self.channel_order} for {self.clip_shape[0]} channels")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise self._bad(f"has labels outside [0, {len(self.class_names)}) for classes {self.class_names}")
        self.attrs = {"format": FORMAT, "version": version, "channel_order": self.channel_order,
                      "class_names": self.class_names, "source": self.source, **extra}

    @staticmethod
    def _read_meta(ds):
        if h5py.check_string_dtype(ds.dtype) is not None:
            return np.asarray([str(s) for s in ds.asstr()[()]], dtype=str)
        return np.asarray(ds[()])

    def __len__(self):
        return int(self.labels.shape[0])

    def _indices(self, indices):
        idx = np.asarray(indices)
        if idx.ndim == 0:
            idx = idx.reshape(1)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"indices into {self.path} must be a 1-D sequence of integers, got {indices!r}")
        idx = idx.astype(np.int64)
        bad = idx[(idx < 0) | (idx >= len(self))]
        if bad.size:
            raise ValueError(f"index {int(bad[0])} out of range for {self.path} with {len(self)} clips")
        return idx

    def read_clips(self, indices):
        """The stored uint8 clips (B, C, F, H, W) at ``indices`` (any order, repeats allowed)."""
        return self._read(self._indices(indices))

    def _read(self, idx):
        if self._file is None:
            raise ValueError(f"clip data set {self.path} is closed")
        out = np.empty((idx.size,) + self.clip_shape, dtype=np.uint8)
        try:
            for k, i in enumerate(idx):
                self._clips.read_direct(out, np.s_[i], np.s_[k])
        except (OSError, ValueError) as exc:
            raise self._bad(f"could not be read at clip {int(i)} (damaged?): {exc}") from None
        return out

    def batch(self, indices):
        """Clips at ``indices`` as float32 (B, C, F, H, W) scaled to [0, 1] (value / 255), and their int64 labels."""
        idx = self._indices(indices)
        x = np.divide(self._read(idx), np.float32(255.0), dtype=np.float32)
        return x, self.labels[idx]

    def fingerprint(self) -> dict:
        """What a computation on this data set depends on: clip shape and dtype, the number of clips and
        a SHA-256 digest of the stored clips, labels and names (read in blocks of clips, so memory
        stays small; computed once per opening). Equal fingerprints mean the same data, whatever the
        file's name or compression."""
        if getattr(self, "_fingerprint", None) is None:
            if self._file is None:
                raise ValueError(f"clip data set {self.path} is closed")
            h = hashlib.sha256(f"{list(self.clip_shape)}|uint8|{len(self)}|".encode())
            block = max(1, (64 << 20) // max(1, int(np.prod(self.clip_shape))))  # about 64 MB per read
            try:
                for start in range(0, len(self), block):
                    h.update(np.ascontiguousarray(self._clips[start:start + block]).tobytes())
            except (OSError, ValueError) as exc:
                raise self._bad(f"could not be read (damaged?): {exc}") from None
            h.update(self.labels.astype("<i8").tobytes())
            h.update(json.dumps(self.names).encode())
            self._fingerprint = {"clip_shape": list(self.clip_shape), "dtype": "uint8", "n": len(self),
                                 "sha256": h.hexdigest()}
        return dict(self._fingerprint)

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False

    def __repr__(self):
        return (f"ClipDataset({str(self.path)!r}: {len(self)} clips of {self.clip_shape}, "
                f"classes {self.class_names})")
