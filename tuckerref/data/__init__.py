"""Data sets of 4-channel (R, G, B, depth) video clips: the shared HDF5 format and its producers.

- :mod:`tuckerref.data.store`: the ``tuckerref-clips`` HDF5 format (writer, lazy batch reader);
- :mod:`tuckerref.data.thetis`: the THETIS importer (real AVI files -> the paper's clips).
"""
from .store import CHANNEL_ORDER, FORMAT, ClipDataset, DatasetWriter, write_dataset

__all__ = ["FORMAT", "CHANNEL_ORDER", "DatasetWriter", "write_dataset", "ClipDataset"]
