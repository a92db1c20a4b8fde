"""Plots of the rank study: accuracy against FLOPs and against measured time (PNG, matplotlib Agg).

Each plot shows every grid point's accuracy after fine-tuning (filled) and before (hollow, the same
colour), EVBMF's point marked with a star, the original network's accuracy as a horizontal line,
and the Pareto front of the fine-tuned points (no other point is both cheaper and at least as
accurate) joined by a line.
"""
from __future__ import annotations

from pathlib import Path


def pareto_front(costs, accuracies) -> list:
    """Indices of the points no other point dominates (cost <= and accuracy >=, one strictly), by cost."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -accuracies[i]))
    front, best = [], float("-inf")
    for i in order:
        if accuracies[i] > best:
            front.append(i)
            best = accuracies[i]
    return front


def plot_study(rows, outdir, title="") -> list:
    """Write ``accuracy_vs_flops.png`` and ``accuracy_vs_time.png`` under ``outdir``; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    original = next((r for r in rows if r.get("kind") == "original"), None)
    points = [r for r in rows if r.get("kind") != "original" and r.get("acc_after") is not None]
    paths = []
    for field, xlabel, name in (("flops", "FLOPs per clip (paper's convention)", "accuracy_vs_flops.png"),
                                ("time_ms_median", "inference time per clip, ms (median, compiled program)",
                                 "accuracy_vs_time.png")):
        pts = [r for r in points if r.get(field) is not None]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        if pts:
            x = [float(r[field]) for r in pts]
            after = [100 * r["acc_after"] for r in pts]
            before = [100 * r["acc_before"] for r in pts]
            ax.scatter(x, before, facecolors="none", edgecolors="tab:blue", label="before fine-tuning")
            ax.scatter(x, after, color="tab:blue", label="after fine-tuning")
            front = pareto_front(x, after)
            ax.plot([x[i] for i in front], [after[i] for i in front], color="tab:blue", lw=1,
                    label="Pareto front (fine-tuned)")
            for i, r in enumerate(pts):
                if r.get("kind") == "evbmf":
                    ax.scatter([x[i]], [after[i]], marker="*", s=220, color="tab:red", zorder=5, label="EVBMF ranks")
                ax.annotate(r["label"], (x[i], after[i]), fontsize=6, xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log")
        if original is not None and original.get("acc_after") is not None:
            ax.axhline(100 * original["acc_after"], color="gray", ls="--",
                       label=f"original {100 * original['acc_after']:.1f}%")
            if original.get(field) is not None:
                ax.scatter([float(original[field])], [100 * original["acc_after"]], marker="s", color="gray")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy, %")
        ax.set_title(title or "rank study")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        path = Path(outdir) / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


__all__ = ["plot_study", "pareto_front"]
