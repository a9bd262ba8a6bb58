"""What a search leaves behind: RUN/pareto.json, RUN/search.json, RUN/pareto.png, RUN/report.md.

Everything here is recomputed from the Optuna storage (and this worker's bookkeeping log), so
any worker, or a rerun after the search ended, writes the same report.
"""
from __future__ import annotations

import json
from pathlib import Path

from hwnas.fileio import write_atomic, write_json
from hwnas.search.pareto import dominates, hypervolume, nadir_reference, pareto_indices

GENERATION_KEY = "NSGAIISampler:generation"


def trial_records(search) -> list[dict]:
    """One record per proposed candidate of every stage (pruned and failed ones included)."""
    measured = search.measured_ms()
    out = []
    for stage, study in search.studies.items():
        for t in study.get_trials(deepcopy=False):
            h = t.user_attrs.get("hwnas")
            if not h:
                continue
            res = t.user_attrs.get("result", {})
            gen = t.system_attrs.get(GENERATION_KEY, 0) if stage == "structural" else h.get("generation", 0)
            out.append({
                "trial": f"{stage}#{t.number}", "stage": stage, "generation": int(gen), "state": t.state.name.lower(),
                "arch": h["arch"], "map": t.values[0] if t.values else None, "map50": res.get("map50"),
                "predicted_latency_ms": h["predicted_latency_ms"], "measured_latency_ms": measured.get(h["arch"]),
                "parent": h.get("parent"), "crossed_with": h.get("crossed_with"),
                "estimated_map": h.get("estimated_map"),
                "reason": t.user_attrs.get("reason"), "train_s": res.get("wall_s"),
                "worker": h.get("worker")})
    return out


def front_of(recs: list[dict], key: str = "predicted_latency_ms") -> list[dict]:
    pts = [(r["map"], r[key]) for r in recs]
    return [recs[i] for i in pareto_indices(pts)]


def stage_fronts(done: list[dict]) -> list[dict]:
    """The front after each stage and after each modular generation, so one can see it move."""
    out = []
    for stage in ("random", "structural"):
        recs = [r for r in done if r["stage"] == stage]
        if recs:
            out.append({"stage": stage, "generation": max(r["generation"] for r in recs), "n": len(recs),
                        "front": front_of(recs)})
    struct = [r for r in done if r["stage"] == "structural"]
    mod = [r for r in done if r["stage"] == "modular"]
    for g in sorted({r["generation"] for r in mod}):
        recs = struct + [r for r in mod if r["generation"] <= g]
        out.append({"stage": "modular", "generation": g, "n": len(recs), "front": front_of(recs)})
    return out


def bookkeeping(run_dir: Path) -> dict:
    rows = []
    path = run_dir / "bookkeeping.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # the line a kill -9 cut short
                pass
    if not rows:
        return {"n": 0}
    over = sum(r["overhead_s"] for r in rows)
    cost = sum(r["train_s"] + r["overhead_s"] for r in rows)
    return {"n": len(rows), "overhead_s_mean": over / len(rows), "trial_s_mean": cost / len(rows),
            "overhead_fraction": over / cost if cost else 0.0,
            "overhead_fraction_max": max(r["overhead_s"] / max(1e-9, r["train_s"] + r["overhead_s"]) for r in rows)}


def final_front(recs: list[dict]) -> list[dict]:
    """The search's front: completed candidates of the search stages (not baselines), by predicted latency."""
    return front_of([r for r in recs if r["state"] == "complete" and r["stage"] != "baseline"])


def summarize(search) -> dict:
    recs = trial_records(search)
    done = [r for r in recs if r["state"] == "complete" and r["stage"] != "baseline"]
    baselines = [r for r in recs if r["stage"] == "baseline" and r["state"] == "complete"]
    front = final_front(recs)
    measured = [r for r in front if r["measured_latency_ms"] is not None]
    on_measured = {r["trial"] for r in front_of(measured, "measured_latency_ms")} if measured else set()
    for r in front:
        r["on_measured_front"] = r["trial"] in on_measured if len(measured) == len(front) else None
    for b in baselines:
        for key in ("predicted_latency_ms", "measured_latency_ms"):
            if b[key] is None:
                continue
            better = [r for r in done if r[key] is not None and r[key] <= b[key] and r["map"] >= b["map"]]
            best = min(better, key=lambda r: (r[key], -r["map"])) if better else None
            b[f"matched_by_{key.split('_')[0]}"] = best["trial"] if best else None
            b[f"strictly_dominated_by_{key.split('_')[0]}"] = bool(
                best and dominates((best["map"], best[key]), (b["map"], b[key])))
    lat = [r["predicted_latency_ms"] for r in done]
    ref = nadir_reference(lat)
    fronts = stage_fronts(done)
    for f in fronts:
        f["hypervolume"] = hypervolume([(r["map"], r["predicted_latency_ms"]) for r in f["front"]], 0.0, ref)
        f["front"] = [r["arch"] for r in f["front"]]
    states: dict[str, int] = {}
    for r in recs:
        if r["stage"] != "baseline":
            states[r["state"]] = states.get(r["state"], 0) + 1
    return {"config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in search.cfg.__dict__.items()},
                       "storage": search.url}, "table_target": search.table.target.to_dict(),
            "counts": states, "front": front, "fronts": fronts, "baselines": baselines,
            "hypervolume_reference": {"map": 0.0, "latency_ms": ref},
            "hypervolume": hypervolume([(r["map"], r["predicted_latency_ms"]) for r in front], 0.0, ref),
            "bookkeeping": bookkeeping(Path(search.cfg.out)), "trials": recs}


def write_report(search) -> Path:
    out = Path(search.cfg.out)
    s = summarize(search)
    keys = ("arch", "map", "map50", "predicted_latency_ms", "measured_latency_ms", "stage", "generation", "trial",
            "on_measured_front")
    write_json(out / "pareto.json", [{k: r.get(k) for k in keys} for r in s["front"]])
    write_json(out / "search.json", s)
    plot(s, out / "pareto.png")
    write_atomic(out / "report.md", markdown(s))
    return out / "report.md"


def plot(s: dict, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    markers = {"structural": "o", "modular": "^", "random": "s"}
    for stage, mk in markers.items():
        pts = [(r["predicted_latency_ms"], r["map"]) for r in s["trials"] if r["stage"] == stage and r["state"] == "complete"]
        if pts:
            ax.scatter(*zip(*pts), marker=mk, s=18, color="0.65", label=f"{stage} trials ({len(pts)})", zorder=1)
    by_arch = {r["arch"]: r for r in s["trials"] if r["state"] == "complete"}
    cmap = plt.get_cmap("viridis")
    for i, f in enumerate(s["fronts"]):
        pts = sorted((by_arch[a]["predicted_latency_ms"], by_arch[a]["map"]) for a in f["front"])
        colour = cmap(i / max(1, len(s["fronts"]) - 1))
        ax.step(*zip(*pts), where="post", color=colour, lw=1.2, zorder=2,
                label=f"{f['stage']} front" + (f" gen {f['generation']}" if f["stage"] == "modular" else ""))
    final = s["front"]
    if final:
        ax.scatter([r["predicted_latency_ms"] for r in final], [r["map"] for r in final], color="tab:red", s=36,
                   zorder=3, label="final front (predicted)")
        meas = [(r["measured_latency_ms"], r["map"]) for r in final if r["measured_latency_ms"] is not None]
        if meas:
            ax.scatter(*zip(*meas), facecolors="none", edgecolors="tab:red", s=60, zorder=3,
                       label="final front (measured)")
    for b in s["baselines"]:
        ax.scatter([b["predicted_latency_ms"]], [b["map"]], marker="*", color="black", s=120, zorder=4)
        ax.annotate(b["arch"].split("/")[1], (b["predicted_latency_ms"], b["map"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    if s["baselines"]:
        ax.scatter([], [], marker="*", color="black", s=120, label="baselines")
    ax.set_xlabel("latency (ms, predicted from the table)")
    ax.set_ylabel("mAP (COCO 0.5:0.95, val)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="lower right")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown(s: dict) -> str:
    c = s["config"]
    lines = [f"# Search report: {c['study']}", "",
             f"- data `{c['data']}`, space `{c['space']}` at {','.join(map(str, c['resolutions']))} px, table `{c['table']}` "
             f"({s['table_target']['backend']} on {s['table_target']['device']})",
             f"- stage `{c['stage']}`, {c['trials']} trained candidates, {c['epochs']} epoch(s) each, seed {c['seed']}"
             + (f", latency budget {c['latency_max_ms']} ms (predicted)" if c["latency_max_ms"] else ""),
             f"- storage `{c['storage']}`",
             "- trials: " + ", ".join(f"{v} {k}" for k, v in sorted(s["counts"].items())), ""]
    lines += ["## Final front (predicted latency), re-measured end to end", "",
              "| trial | arch | mAP | mAP@0.5 | predicted ms | measured ms | error % | on measured front |",
              "|---|---|---|---|---|---|---|---|"]
    for r in s["front"]:
        m, p = r["measured_latency_ms"], r["predicted_latency_ms"]
        err = "-" if m is None else f"{100 * (p - m) / m:+.1f}"
        mark = {True: "yes", False: "no", None: "-"}[r["on_measured_front"]]
        lines.append(f"| {r['trial']} | `{r['arch']}` | {r['map']:.4f} | {_ms(r['map50'])} | {p:.2f} | {_ms(m)} | {err} | {mark} |")
    lines += ["", f"Hypervolume (mAP x ms, reference mAP 0, {s['hypervolume_reference']['latency_ms']:.2f} ms): "
              f"{s['hypervolume']:.4f}", "", "## How the front moved", "",
              "| stage | generation | candidates so far | front size | hypervolume |", "|---|---|---|---|---|"]
    for f in s["fronts"]:
        lines.append(f"| {f['stage']} | {f['generation']} | {f['n']} | {len(f['front'])} | {f['hypervolume']:.4f} |")
    if s["baselines"]:
        lines += ["", "## Baselines (trained with the same recipe)", "",
                  "| arch | mAP | predicted ms | measured ms | matched by (predicted) | matched by (measured) |",
                  "|---|---|---|---|---|---|"]
        for b in s["baselines"]:
            lines.append(f"| `{b['arch']}` | {b['map']:.4f} | {b['predicted_latency_ms']:.2f} | {_ms(b['measured_latency_ms'])} "
                         f"| {b.get('matched_by_predicted') or 'none'} | {b.get('matched_by_measured') or '-'} |")
    failed = [r for r in s["trials"] if r["state"] == "fail"]
    if failed:
        lines += ["", "## Failed candidates", ""] + [f"- {r['trial']} `{r['arch']}`: {r['reason']}" for r in failed]
    bk = s["bookkeeping"]
    if bk["n"]:
        lines += ["", f"Bookkeeping (this worker, {bk['n']} trials): {bk['overhead_s_mean'] * 1e3:.0f} ms a trial, "
                  f"{100 * bk['overhead_fraction']:.3f} % of trial time (worst trial {100 * bk['overhead_fraction_max']:.3f} %)."]
    lines += ["", "Files: `pareto.json` (front), `search.json` (every trial), `pareto.png`, `trials/<id>/last.pt` (weights).", ""]
    return "\n".join(lines)
