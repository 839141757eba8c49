"""Figures of a benchmark report: bits/byte per file and codec, ratio against speed."""

from __future__ import annotations

from pathlib import Path

from .formats import write_atomic

BPB_AXIS_MAX = 10.0  # the bar plot's bits/byte axis ends here; taller bars are clipped


def plot(doc: dict, out_dir, name: str) -> list[Path]:
    """DIR/NAME.png (bits/byte per file and codec, grouped bars) and DIR/NAME_speed.png
    (ratio against compression and decompression speed over all files, log speed
    axis). Needs matplotlib (ImportError otherwise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    codecs = list(doc["codecs"])
    colors = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(codecs)}
    if "megazip" in colors:
        colors["megazip"] = "black"
    groups = [(f["path"], f["codecs"]) for f in doc["files"]]
    if doc["total"]["codecs"]:
        groups.append((f"all {doc['total']['files']} files", doc["total"]["codecs"]))

    width = 0.8 / max(1, len(codecs))
    inches = 1.5 + len(groups) * (0.3 + 0.09 * len(codecs))
    fig, ax = plt.subplots(figsize=(min(16.0, max(7.0, inches)), 5.5))
    values = [r["bits_per_byte"] for _, rows in groups for r in rows.values()]
    top = min(max([v for v in values if v is not None], default=1.0) * 1.05, BPB_AXIS_MAX)
    shown: set[str] = set()  # codecs already in the legend
    for i, c in enumerate(codecs):
        for g, (_, rows) in enumerate(groups):
            v = rows[c]["bits_per_byte"] if c in rows else None
            if v is None:
                continue
            x = g - 0.4 + (i + 0.5) * width
            ax.bar(x, min(v, top), width, color=colors[c], label=None if c in shown else c)
            shown.add(c)
            if v > top:  # clipped (tiny inputs can cost many bits per byte): say how tall
                box = {"facecolor": "white", "edgecolor": "none", "pad": 1}
                ax.text(
                    x,
                    top * 0.98,
                    f"{v:.0f}",
                    rotation=90,
                    ha="center",
                    va="top",
                    fontsize=7,
                    bbox=box,
                )
    ax.set_ylim(0, top)
    ax.set_xticks(range(len(groups)), [g for g, _ in groups], rotation=30, ha="right")
    if doc["total"]["codecs"] and len(groups) > 1:
        ax.axvline(len(groups) - 1.5, color="gray", lw=0.8, ls="--")
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title(f"{name}: compressed size per file")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(
        ncol=min(len(codecs), 5), fontsize="small", loc="lower center", bbox_to_anchor=(0.5, 1.08)
    )
    fig.tight_layout()
    bars = write_atomic(out / f"{name}.png", lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)

    total = doc["total"]["codecs"] or (groups[-1][1] if groups else {})
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.8), sharey=True)
    panels = []
    for ax, key, label in zip(
        axes, ("compress_MBps", "decompress_MBps"), ("compression", "decompression"), strict=True
    ):
        points = [(c, r[key], r["ratio"]) for c, r in total.items() if r[key] and r["ratio"]]
        for c, x, y in points:
            ax.scatter(x, y, s=50, color=colors[c], zorder=3)
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} speed, MB/s (log scale)")
        ax.grid(alpha=0.3, which="both")
        if points:
            ax.set_xlim(min(p[1] for p in points) / 2, max(p[1] for p in points) * 8)
        panels.append((ax, points))
    axes[0].set_ylabel("ratio: original / compressed (higher is better)")
    fig.suptitle(f"{name}: ratio against speed, all files")
    fig.tight_layout()
    axes[0].set_ylim(axes[0].get_ylim())  # freeze the limits, then place the labels
    for ax, points in panels:
        _label_points(ax, points)
    speed = write_atomic(out / f"{name}_speed.png", lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return [bars, speed]


def _label_points(ax, points: list[tuple[str, float, float]]) -> None:
    """Label scatter points (name, x, y) beside them: right of the point if the label
    covers no other label or point and stays inside the axes, else left, else a line lower
    or higher (with a thin line back to the point). Call once the axes' limits are final."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    taken = []
    for _, x, y in points:
        cx, cy = ax.transData.transform((x, y))
        taken.append(Bbox([[cx - 5, cy - 5], [cx + 5, cy + 5]]))
    steps = [0] + [s * k for k in range(1, 2 * len(points) + 1) for s in (-1, 1)]
    for name, x, y in sorted(points, key=lambda p: -p[2]):
        for step in steps:
            for dx, ha in ((8, "left"), (-8, "right")):
                kw = {"textcoords": "offset points", "xytext": (dx, 11 * step), "ha": ha}
                t = ax.annotate(name, (x, y), va="center", **kw)
                box = t.get_window_extent(renderer)
                t.remove()
                clear = not any(box.overlaps(b) for b in taken)
                if clear and inside.containsx(box.x0) and inside.containsx(box.x1):
                    break
            else:
                continue
            break
        line = {"arrowstyle": "-", "color": "gray", "lw": 0.5} if step else None
        ax.annotate(name, (x, y), va="center", arrowprops=line, **kw)
        taken.append(box)
