"""One PNG from benchmark rows: per kernel, time per call of every contender
across cases (top) and the speed-up of the C kernel over each peer (bottom)."""
from __future__ import annotations


def plot(rows: list[dict], path: str, title: str = "fastdecode benchmarks") -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    kernels = list(dict.fromkeys(r["kernel"] for r in rows))
    if not kernels:
        raise ValueError("no benchmark results to plot")
    # each panel as wide as its cases need (sampling has dozens), so every label stays legible
    widths = [max(5.5, 0.3 * sum(r["kernel"] == k for r in rows)) for k in kernels]
    fig, axes = plt.subplots(2, len(kernels), figsize=(sum(widths), 9), squeeze=False,
                             gridspec_kw={"width_ratios": widths})
    for col, kernel in enumerate(kernels):
        mine = [r for r in rows if r["kernel"] == kernel]
        labels = [f"{r['case']}\n{r['threads']}T" for r in mine]
        x = range(len(mine))
        contenders = list(dict.fromkeys(k for r in mine for k in r["median_s"]))
        top, bottom = axes[0][col], axes[1][col]
        for name in contenders:
            ys = [r["median_s"].get(name, float("nan")) * 1e6 for r in mine]
            top.plot(x, ys, marker="o", label=name, linewidth=2.5 if name == mine[0]["baseline"] else 1)
        top.set_yscale("log")
        top.set_ylabel("time per call (us, log)")
        top.set_title(kernel)
        top.legend(fontsize=7)
        peers = [c for c in contenders if c != mine[0]["baseline"]]
        width = 0.8 / max(1, len(peers))
        for i, name in enumerate(peers):
            ys = [r["speedup"].get(name) or 0 for r in mine]
            bottom.bar([xi + (i - (len(peers) - 1) / 2) * width for xi in x], ys, width, label=name)
        bottom.axhline(1.0, color="black", linewidth=0.8)
        spread = [v for name in peers for v in (r["speedup"].get(name) for r in mine) if v]
        if spread and max(spread) / min(spread) > 20:  # e.g. 4x next to 200x: only a log axis shows both
            bottom.set_yscale("log")
        bottom.set_ylabel(f"speed-up of {mine[0]['baseline']} (x)")
        bottom.legend(fontsize=7)
        for ax in (top, bottom):
            ax.set_xticks(list(x))
            ax.set_xticklabels(labels, fontsize=7, rotation=45, ha="right")
            ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
