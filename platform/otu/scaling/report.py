"""The one table and the one plot of a scaling study: measured rows beside DeepSpeed's estimates.

A study directory holds ``scaling.parquet`` and ``scaling.md`` (one table whose ``kind`` is
``measured`` — every size, ZeRO stage, worker count, offload and variant such as with/without SW or
LoRA, each beside DeepSpeed's model-state estimate for it — or ``estimate``: DeepSpeed's estimates
for the ``--models`` given, from a measured study or from ``otu scale --estimate`` run into the same
directory; then the ZeRO-3 vs ZeRO-0 memory comparison) and ``scaling.png`` (one figure:
per-worker peak memory and step time against parameters; measured solid, their estimates dashed,
``--models`` estimates as open markers).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from otu.figures import plt, save_figure
from otu.scaling.estimate import Estimate
from otu.scaling.study import SCALING_FILE

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
        rows.append(
            {
                "size": key[0],
                "workers": key[1],
                "params": int(z0.loc[key, "params"]),
                "zero0_gib": a,
                "zero3_gib": b,
                "saved_mib": (a - b) * MIB,
                "saved_pct": 100.0 * (a - b) / a,
            }
        )
    return pd.DataFrame(rows)


def with_estimates(df: pd.DataFrame, estimates: list[Estimate]) -> pd.DataFrame:
    """``df``'s rows followed by DeepSpeed's estimates as rows of the same table (``kind``); an
    earlier estimate of the same model, stage, offload and GPUs is replaced."""
    rows = pd.DataFrame(
        [
            {
                "size": e.model,
                "params": e.params,
                "zero_stage": e.zero_stage,
                "offload": e.offload,
                "workers": e.gpus_per_node * e.nodes,
                "variant": "",
                "kind": "estimate",
                "status": "estimate",
                "error": "",
                "estimate_gib": e.total_gpu_gb,
                "host_gib": e.cpu_gb,
                "gpus_per_node": e.gpus_per_node,
                "nodes": e.nodes,
                "source": e.source,
            }
            for e in estimates
        ]
    )
    if not len(rows):
        return df
    if not len(df):
        return rows
    key = ["size", "zero_stage", "offload", "workers"]
    new = pd.MultiIndex.from_frame(rows[key])
    stale = (df["kind"] == "estimate") & pd.MultiIndex.from_frame(df[key]).isin(new)
    return pd.concat([df[~stale], rows], ignore_index=True)


def scaling_markdown(df: pd.DataFrame) -> str:
    lines = [
        "| size | params | ZeRO | workers | offload | variant | peak/worker GiB | loop GiB | GPU peak GiB | "
        "estimate GiB | step s | SW s | SW share | tokens/s | status | estimate: host GiB/node |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in df.to_dict("records"):
        status = r["status"] if r["status"] in ("ok", "estimate") else f"error: {r['error']}"
        lines.append(
            f"| {r['size']} | {_count(r['params'])} | {r['zero_stage']} | {r['workers']} | {r['offload']} | "
            f"{r.get('variant', 'spec')} | "
            f"{_f(r.get('peak_rss_gib'), 3)} | {_f(r.get('loop_rss_gib'), 3)} | {_f(r.get('gpu_peak_gib'), 3)} | "
            f"{_f(r.get('estimate_gib'), 3)} | {_f(r.get('step_time_s'), 3)} | {_f(r.get('reg_time_s'), 3)} | "
            f"{_pct(r.get('sw_share'))} | {_f(r.get('tokens_per_s'), 0)} | {status} | {_f(r.get('host_gib'), 1)} |"
        )
    variants = df["variant"].dropna().unique() if "variant" in df else ["spec"]
    for variant in variants:
        cmp = zero3_vs_zero0(df[df["variant"] == variant] if "variant" in df else df)
        if not len(cmp):
            continue
        which = "" if variant == "spec" else f" ({variant})"
        lines += ["", f"ZeRO-3 against ZeRO-0{which}, same model and workers (per-worker peak memory):", ""]
        for r in cmp.to_dict("records"):
            verb = "below" if r["saved_mib"] > 0 else "ABOVE"
            lines.append(
                f"- {r['size']} ({_count(r['params'])} params), {r['workers']} worker(s): ZeRO-3 "
                f"{r['zero3_gib']:.3f} GiB vs ZeRO-0 {r['zero0_gib']:.3f} GiB — {abs(r['saved_mib']):.0f} MiB "
                f"({abs(r['saved_pct']):.1f} %) {verb} ZeRO-0"
            )
    return "\n".join(lines) + "\n"


def write_scaling_report(df: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``scaling.parquet``, ``scaling.md`` and, when anything was measured or estimated, ``scaling.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / SCALING_FILE
    df.to_parquet(table, index=False)
    md = out_dir / "scaling.md"
    md.write_text(scaling_markdown(df))
    files = [table, md]
    if df["status"].isin(["ok", "estimate"]).any():
        files.append(_scaling_plot(df, out_dir / "scaling.png"))
    return files


def read_table(out_dir: Path) -> pd.DataFrame:
    """The study table already in ``out_dir`` (empty when there is none)."""
    path = out_dir / SCALING_FILE
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame()


def _scaling_plot(df: pd.DataFrame, path: Path) -> Path:
    """Left: per-worker peak memory vs parameters (measured solid, its estimate dashed, ``--models``
    estimates open markers); right: step time (solid) and its SW part (dotted) vs parameters."""
    ok = df[df["status"] == "ok"]
    est = df[df["status"] == "estimate"]
    fig, (mem_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = ["zero_stage", "workers", "offload", "variant"]
    for key, group in ok.groupby(keys, sort=True):
        group = group.sort_values("params")
        label = f"ZeRO-{key[0]} ×{key[1]}" + (f" {key[2]} offload" if key[2] != "none" else "")
        label += f" {key[3]}" if key[3] != "spec" else ""
        gpu = group["gpu_peak_gib"].notna().all()
        memory = group["gpu_peak_gib" if gpu else "peak_rss_gib"]
        line = mem_ax.plot(group["params"], memory, marker="o", label=label)[0]
        mem_ax.plot(group["params"], group["estimate_gib"], ls="--", color=line.get_color(), alpha=0.6)
        time_ax.plot(group["params"], group["step_time_s"], marker="o", color=line.get_color(), label=label)
        time_ax.plot(group["params"], group["reg_time_s"], ls=":", color=line.get_color(), alpha=0.8)
    for (stage, workers, offload), group in est.groupby(["zero_stage", "workers", "offload"], sort=True):
        group = group.sort_values("params")
        mem_ax.plot(
            group["params"],
            group["estimate_gib"],
            ls=":",
            marker="s",
            mfc="none",
            label=f"estimate ZeRO-{stage} ×{int(workers)} {offload}",
        )
    mem_ax.set(
        xscale="log",
        yscale="log",
        xlabel="parameters",
        ylabel="GiB per worker",
        title="peak memory (solid) · its model-state estimate (dashed)",
    )
    time_ax.set(
        xscale="log", xlabel="parameters", ylabel="seconds", title="step time (solid) · SW regulariser part (dotted)"
    )
    for ax in (mem_ax, time_ax):
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
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
