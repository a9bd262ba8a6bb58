"""Loss curves per pyramid level, read from training runs.

``hwnas train`` records in every epoch of ``RUN/metrics.json`` each loss component's share per
out level (``levels``: ``loss_cls/p3`` is the sum of P3's rows with the component's own
normaliser, so a component's levels add up to it; ``positives/p3`` the positives per iteration;
``hwnas.heads.losses.DetectionLoss.by_level``). This script tabulates and plots them: for each
run, each component's share per level at a few epochs, how much of its first-epoch value each
level kept at the end, and the positives per level; one figure per run with a panel per component.

    python benchmarks/level_curves.py runs/bench/learning/levels/faces runs/bench/learning/levels/objects \
        --out benchmarks/results/learning/level-curves
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def curves(run: Path) -> tuple[dict, list[dict]]:
    if not (run / "metrics.json").exists():
        raise SystemExit(f"{run}: no metrics.json; give folders that hwnas train wrote")
    m = json.loads((run / "metrics.json").read_text())
    hist = [h for h in m["history"] if h.get("levels")]
    if not hist:
        raise SystemExit(f"{run}/metrics.json has no per-level losses: train it with this hwnas (one-stage heads)")
    return m, hist


def table(run: Path, m: dict, hist: list[dict]) -> list[str]:
    keys = sorted(hist[0]["levels"])
    comps = sorted({k.split("/")[0] for k in keys if not k.startswith("positives")})
    levels = sorted({k.split("/")[1] for k in keys}, key=lambda s: int(s[1:]))
    n = len(hist)
    picks = sorted({0, 1, n // 4, n // 2, 3 * n // 4, n - 1} & set(range(n)))
    out = [f"### {run.name}: `{m['arch']}`, {n} epochs", ""]
    for c in comps:
        out += [f"**{c}** (share per level; the component is their sum)", "",
                "| epoch | " + " | ".join(levels) + " | sum |", "|---" * (len(levels) + 2) + "|"]
        for i in picks:
            vals = [hist[i]["levels"].get(f"{c}/{lv}", 0.0) for lv in levels]
            out.append(f"| {hist[i]['epoch'] + 1} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {sum(vals):.4f} |")
        first, last = (sum(hist[i]["levels"].get(f"{c}/{lv}", 0.0) for lv in levels) for i in (0, -1))
        kept = [(hist[-1]["levels"].get(f"{c}/{lv}", 0.0), hist[0]["levels"].get(f"{c}/{lv}", 0.0)) for lv in levels]
        # a level that held under 1 % of the component at the start has no meaningful ratio
        out += ["| last / first | " + " | ".join(f"{a / b:.2f}" if b > 0.01 * first else "-" for a, b in kept)
                + f" | {last / max(1e-12, first):.2f} |"]
        if c in ("loss_box", "loss_ctr"):  # their items are the positives: the loss per positive, level by level
            per = []
            for i in (0, -1):
                lv_ = hist[i]["levels"]
                total = sum(lv_.get(f"positives/{lv}", 0.0) for lv in levels)
                per.append([lv_.get(f"{c}/{lv}", 0.0) * total / lv_[f"positives/{lv}"]
                            if lv_.get(f"positives/{lv}", 0.0) >= 0.5 else None for lv in levels])
            for name, row in zip(("first", "last"), per):
                out.append(f"| per positive, {name} epoch | " + " | ".join("-" if v is None else f"{v:.3f}" for v in row)
                           + " | |")
        out.append("")
    for p in sorted({k.split("/")[0] for k in keys if k.startswith("positives")}):
        out += [f"**{p}** per iteration (% of all)", "", "| epoch | " + " | ".join(levels) + " |",
                "|---" * (len(levels) + 1) + "|"]
        for i in picks:
            vals = [hist[i]["levels"].get(f"{p}/{lv}", 0.0) for lv in levels]
            total = max(1e-12, sum(vals))
            out.append(f"| {hist[i]['epoch'] + 1} | " + " | ".join(f"{v:.1f} ({100 * v / total:.0f} %)" for v in vals)
                       + " |")
        out.append("")
    return out


def plot(run: Path, hist: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(hist[0]["levels"])
    comps = sorted({k.split("/")[0] for k in keys if not k.startswith("positives")})
    levels = sorted({k.split("/")[1] for k in keys}, key=lambda s: int(s[1:]))
    fig, axes = plt.subplots(1, len(comps), figsize=(4 * len(comps), 3.2), squeeze=False)
    ep = [h["epoch"] + 1 for h in hist]
    for ax, c in zip(axes[0], comps):
        for lv in levels:
            ax.plot(ep, [h["levels"].get(f"{c}/{lv}", 0.0) for h in hist], label=lv)
        ax.set_title(c)
        ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(run.name)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="training run folders (RUN/metrics.json)")
    ap.add_argument("--out", type=Path, required=True, help="OUT.md, and OUT-<run>.png per run")
    a = ap.parse_args()
    lines = ["Loss per pyramid level, per epoch (`python benchmarks/level_curves.py "
             + " ".join(str(r) for r in a.runs) + f" --out {a.out}`).", ""]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for run in a.runs:
        m, hist = curves(run)
        lines += table(run, m, hist)
        png = a.out.parent / f"{a.out.name}-{run.name}.png"
        plot(run, hist, png)
        lines += [f"![{run.name}]({png.name})", ""]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
