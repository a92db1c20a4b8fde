"""The rank study's records: a JSON-lines log appended as each result completes, and a CSV summary.

``records.jsonl`` is the source of truth. Each result is one line, appended with a single
``write`` of the whole line, then flushed and ``fsync``-ed, so that a study killed at any moment
leaves every earlier line intact; a trailing line without its newline (a write cut short) is
ignored on reading and cut off before the next append. ``study.csv`` (one row per grid point,
merged from the log) is rewritten after every append through a temporary file and ``os.replace``,
so a reader never sees it half written. ``study.json`` holds the study's settings; a rerun with
other settings in the same directory is refused rather than mixed in.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from ..io import atomic_path

JSONL_NAME, CSV_NAME, SETTINGS_NAME = "records.jsonl", "study.csv", "study.json"

CSV_FIELDS = ["label", "kind", "value", "ranks", "folds", "acc_before", "acc_after", "params", "flops",
              "time_ms_median", "time_ms_min", "time_runs", "train_seconds", "epochs", "seed", "key"]


def _write_atomic(path, text):
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


class RecordLog:
    """Append-only record log of one study directory (see the module docstring)."""

    def __init__(self, outdir):
        self.dir = Path(outdir)
        self.jsonl = self.dir / JSONL_NAME
        self.csv = self.dir / CSV_NAME
        self.settings_path = self.dir / SETTINGS_NAME

    def check_settings(self, settings: dict):
        """Write ``settings`` for a new study; for an existing one, refuse different settings."""
        self.dir.mkdir(parents=True, exist_ok=True)
        canonical = json.loads(json.dumps(settings))
        if self.settings_path.exists():
            try:
                old = json.loads(self.settings_path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"{self.settings_path} is damaged ({exc}); remove the directory to start "
                                 f"over") from None
            if old != canonical:
                diff = sorted(k for k in set(old) | set(canonical) if old.get(k) != canonical.get(k))
                raise ValueError(f"{self.dir} holds a study with other settings ({', '.join(diff)} differ); "
                                 f"choose another output directory")
        else:
            _write_atomic(self.settings_path, json.dumps(canonical, indent=1) + "\n")

    def _complete_bytes(self):
        """The log's bytes up to its last newline (a cut-short last line excluded)."""
        if not self.jsonl.exists():
            return b""
        data = self.jsonl.read_bytes()
        return data[: data.rfind(b"\n") + 1]

    def read(self) -> list:
        """Every complete record, in the order written."""
        out = []
        for n, line in enumerate(self._complete_bytes().decode().splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{self.jsonl} line {n} is damaged: {exc}") from None
        return out

    def append(self, record: dict):
        """Append one record (one line, fsync-ed), then rewrite the CSV summary."""
        self.dir.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n").encode()
        keep = len(self._complete_bytes())
        with open(self.jsonl, "ab") as f:
            if f.tell() != keep:  # a line cut short by an earlier kill: drop it
                f.truncate(keep)
                f.seek(keep)
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.write_csv()

    def write_csv(self):
        rows = summarise(self.read())
        buf = io.StringIO()
        writer = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else v)
                             for k, v in row.items()})
        _write_atomic(self.csv, buf.getvalue())


def summarise(records) -> list:
    """One row per point (the original network first) merged from its ``train`` records (one per fold,
    accuracies averaged) and its ``time`` record; points without all their folds have ``folds`` < the
    study's fold count and no accuracy."""
    points = {}
    for rec in records:
        row = points.setdefault(rec["key"], {"key": rec["key"], "folds_done": {}})
        if rec["type"] == "train":
            row["folds_done"][rec["fold"]] = rec
            for field in ("label", "kind", "value", "ranks", "params", "flops", "epochs", "seed", "n_folds"):
                row[field] = rec[field]
        elif rec["type"] == "time":
            row.update(time_ms_median=rec["time_ms_median"], time_ms_min=rec["time_ms_min"],
                       time_runs=rec["time_runs"])
    rows = []
    for row in points.values():
        folds = row.pop("folds_done")
        row["folds"] = len(folds)
        if folds and len(folds) == row.get("n_folds"):
            recs = [folds[k] for k in sorted(folds)]
            row["acc_before"] = sum(r["acc_before"] for r in recs) / len(recs)
            row["acc_after"] = sum(r["acc_after"] for r in recs) / len(recs)
            row["train_seconds"] = sum(r["seconds"] for r in recs)
        rows.append(row)
    rows.sort(key=lambda r: r.get("kind") != "original")
    return rows


__all__ = ["RecordLog", "summarise", "CSV_FIELDS", "JSONL_NAME", "CSV_NAME", "SETTINGS_NAME"]
