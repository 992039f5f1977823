"""Tables and plots of a scaling study: measured rows beside DeepSpeed's estimates.

Files written: ``scaling.md`` (the measured table and the ZeRO-3 vs ZeRO-0 memory comparison),
``memory_vs_size.png`` (per-worker peak memory against parameters, one line per ZeRO stage,
estimates dashed), ``throughput_vs_workers.png``; for ``--estimate``: ``estimates.parquet``,
``estimates.md`` and ``estimates.png``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from otu.cluster.estimate import Estimate
from otu.figures import plt, save_figure

MIB = 1024.0


def zero3_vs_zero0(df: pd.DataFrame) -> pd.DataFrame:
    """Per (size, workers, offload=none): ZeRO-0 and ZeRO-3 per-worker peak memory and the saving."""
    ok = df[(df["status"] == "ok") & (df["offload"] == "none")]
    z0 = ok[ok["zero_stage"] == 0].set_index(["size", "workers"])
    z3 = ok[ok["zero_stage"] == 3].set_index(["size", "workers"])
    both = z0.index.intersection(z3.index)
    rows = []
    for key in both:
        a, b = float(z0.loc[key, "peak_rss_gib"]), float(z3.loc[key, "peak_rss_gib"])
        rows.append({"size": key[0], "workers": key[1], "params": int(z0.loc[key, "params"]),
                     "zero0_gib": a, "zero3_gib": b, "saved_mib": (a - b) * MIB,
                     "saved_pct": 100.0 * (a - b) / a})
    return pd.DataFrame(rows)


def scaling_markdown(df: pd.DataFrame) -> str:
    lines = [
        "| size | params | ZeRO | workers | offload | peak/worker GiB | loop GiB | GPU peak GiB | "
        "estimate GiB | step s | SW s | SW share | tokens/s | status |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in df.to_dict("records"):
        status = r["status"] if r["status"] == "ok" else f"error: {r['error']}"
        lines.append(
            f"| {r['size']} | {_count(r['params'])} | {r['zero_stage']} | {r['workers']} | {r['offload']} | "
            f"{_f(r.get('peak_rss_gib'), 3)} | {_f(r.get('loop_rss_gib'), 3)} | {_f(r.get('gpu_peak_gib'), 3)} | "
            f"{_f(r.get('estimate_gib'), 3)} | {_f(r.get('step_time_s'), 3)} | {_f(r.get('reg_time_s'), 3)} | "
            f"{_pct(r.get('sw_share'))} | {_f(r.get('tokens_per_s'), 0)} | {status} |"
        )
    cmp = zero3_vs_zero0(df)
    if len(cmp):
        lines += ["", "ZeRO-3 against ZeRO-0, same model and workers (per-worker peak memory):", ""]
        for r in cmp.to_dict("records"):
            verb = "below" if r["saved_mib"] > 0 else "ABOVE"
            lines.append(
                f"- {r['size']} ({_count(r['params'])} params), {r['workers']} worker(s): ZeRO-3 "
                f"{r['zero3_gib']:.3f} GiB vs ZeRO-0 {r['zero0_gib']:.3f} GiB — {abs(r['saved_mib']):.0f} MiB "
                f"({abs(r['saved_pct']):.1f} %) {verb} ZeRO-0"
            )
    return "\n".join(lines) + "\n"


def write_scaling_report(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "scaling.md"
    md.write_text(scaling_markdown(df))
    files = [md]
    ok = df[df["status"] == "ok"]
    if len(ok):
        files.append(_memory_plot(ok, out_dir / "memory_vs_size.png"))
        files.append(_throughput_plot(ok, out_dir / "throughput_vs_workers.png"))
    return files


def estimates_frame(estimates: list[Estimate]) -> pd.DataFrame:
    return pd.DataFrame([e.to_row() for e in estimates])


def estimates_markdown(df: pd.DataFrame) -> str:
    first = df.iloc[0]
    lines = [
        f"Model-state memory per GPU for {int(first['nodes'])} node(s) × {int(first['gpus_per_node'])} GPUs "
        "(GiB; θ₀ = OPT-OUT's frozen 16-bit reference):",
        "",
        "| model | params | ZeRO | offload | GPU states | + θ₀ | GPU total | CPU per node | source |",
        "|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in df.to_dict("records"):
        lines.append(
            f"| {r['model']} | {_count(r['params'])} | {r['zero_stage']} | {r['offload']} | {r['gpu_gb']:.1f} | "
            f"{r['reference_gpu_gb']:.1f} | {r['total_gpu_gb']:.1f} | {r['cpu_gb']:.1f} | {r['source']} |"
        )
    return "\n".join(lines) + "\n"


def write_estimates(estimates: list[Estimate], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    df = estimates_frame(estimates)
    table = out_dir / "estimates.parquet"
    df.to_parquet(table, index=False)
    md = out_dir / "estimates.md"
    md.write_text(estimates_markdown(df))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (stage, offload), group in df.groupby(["zero_stage", "offload"], sort=True):
        group = group.sort_values("params")
        ax.plot(group["params"], group["total_gpu_gb"], marker="o", label=f"ZeRO-{stage}, offload {offload}")
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="GiB per GPU (states + θ₀)",
           title=f"{int(df['nodes'].iloc[0])}×{int(df['gpus_per_node'].iloc[0])} GPUs: model-state estimates")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    plot = out_dir / "estimates.png"
    save_figure(fig, plot)
    return [table, md, plot]


def _memory_plot(ok: pd.DataFrame, path: Path) -> Path:
    workers = int(ok["workers"].max())
    data = ok[(ok["workers"] == workers) & (ok["offload"] == "none")]
    fig, ax = plt.subplots(figsize=(6, 4))
    for stage, group in data.groupby("zero_stage"):
        group = group.sort_values("params")
        line = ax.plot(group["params"], group["peak_rss_gib"], marker="o", label=f"ZeRO-{stage} measured")[0]
        ax.plot(group["params"], group["estimate_gib"], ls="--", color=line.get_color(), alpha=0.7,
                label=f"ZeRO-{stage} model-state estimate")
    ax.set(xscale="log", xlabel="parameters", ylabel="GiB per worker",
           title=f"peak memory per worker ({workers} worker(s), no offload)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _throughput_plot(ok: pd.DataFrame, path: Path) -> Path:
    size = ok.sort_values("params")["size"].iloc[-1]
    data = ok[(ok["size"] == size) & (ok["offload"] == "none")]
    metric = "tokens_per_s" if data["tokens_per_s"].notna().any() else "step_time_s"
    fig, ax = plt.subplots(figsize=(6, 4))
    for stage, group in data.groupby("zero_stage"):
        group = group.sort_values("workers")
        ax.plot(group["workers"], group[metric], marker="o", label=f"ZeRO-{stage}")
    ax.set(xlabel="workers", ylabel="tokens / s" if metric == "tokens_per_s" else "step time (s)",
           title=f"{size}: {'throughput' if metric == 'tokens_per_s' else 'step time'} vs workers")
    ax.set_xticks(sorted(data["workers"].unique()))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def _count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def _f(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _pct(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.0f} %"
