"""``tuckerref data thetis`` and ``tuckerref data thetis-template``: the THETIS importer's commands."""
from __future__ import annotations

import sys
from pathlib import Path

from ..outputs import check_outputs
from .defaults import THETIS_SHOTS as DEFAULT_SHOTS


def register(data_sub):
    p = data_sub.add_parser(
        "thetis", help="turn THETIS RGB + depth AVI files into the paper's clip data set",
        description="Pair VIDEO_RGB/<shot>/ and VIDEO_Depth/<shot>/ files under ROOT by name, cut 28 frames "
                    "around each annotated mid-point, scale down by 4 and write uint8 clips (R, G, B, depth) "
                    "to OUT. Every clip that cannot be made is reported with its reason.")
    p.add_argument("root", metavar="ROOT", type=Path, help="THETIS root holding VIDEO_RGB/ and VIDEO_Depth/")
    p.add_argument("out", metavar="OUT.h5", type=Path, nargs="?",
                   help="output data set (may also follow the annotation files)")
    p.add_argument("--annotations", nargs="+", required=True, metavar="CSV", type=Path,
                   help="annotation files: 'file;mid-point seconds[;ignored]' rows, no header")
    p.add_argument("--shots", nargs="+", default=list(DEFAULT_SHOTS), metavar="SHOT",
                   help="shot directories; label = position (default: %(default)s)")
    p.add_argument("--skip", nargs="+", default=[], metavar="FILE", help="RGB or depth file names to leave out")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count)")
    p.add_argument("--report", type=Path, default=None, help="also write the skip report to this text file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)

    t = data_sub.add_parser("thetis-template", help="write an annotation template (file names, empty mid-points)")
    t.add_argument("root", metavar="ROOT", type=Path, help="THETIS root holding VIDEO_RGB/ and VIDEO_Depth/")
    t.add_argument("out", metavar="OUT.csv", type=Path)
    t.add_argument("--shots", nargs="+", default=list(DEFAULT_SHOTS), metavar="SHOT",
                   help="shot directories (default: %(default)s)")
    t.set_defaults(func=run_template)


def _split_out(args):
    """Allow ``ROOT --annotations A.csv B.csv OUT.h5``: the greedy list then ends with OUT."""
    annotations, out = list(args.annotations), args.out
    if out is None:
        if len(annotations) < 2:
            raise ValueError("give at least one annotation file and the output OUT.h5")
        out = annotations.pop()
        if out.suffix.lower() == ".csv":
            raise ValueError(f"the output {out} looks like an annotation file; give OUT.h5 after ROOT")
    return annotations, out


def _write_report(path, lines):
    if path is not None:
        try:
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot write report {path}: {exc}") from None


def run(args):
    annotations, out = _split_out(args)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    check_outputs(files={"OUT.h5": out, "--report": args.report}, inputs=[args.root, *annotations])
    from ..data.thetis import NoClipsError, import_thetis
    try:
        result = import_thetis(args.root, annotations, out, shots=tuple(args.shots), skip=args.skip,
                               workers=args.workers, progress=not args.no_progress)
    except NoClipsError as exc:
        lines = exc.result.report_lines()
        print("\n".join(lines))
        _write_report(args.report, lines)
        print(f"tuckerref data thetis: error: {exc}", file=sys.stderr)
        return 1
    lines = result.report_lines()
    print("\n".join(lines))
    _write_report(args.report, lines)
    print(f"wrote {out}")
    return 0


def run_template(args):
    check_outputs(files={"OUT.csv": args.out}, inputs=[args.root])
    from ..data.thetis import write_template
    n = write_template(args.root, args.out, shots=tuple(args.shots))
    print(f"wrote {n} rows to {args.out}; fill in the mid-points (seconds) in the second column")
    return 0
