"""Attacks beyond the LLM family, on the shipped specs: does UOT-Unlearn's forgotten digit come back
from k images (``uot_digits.yaml``, k-shot relearning with the pretraining objective), and does a
probe fit on k labelled rows find the sensitive attribute after the barycenter
(``barycenter_tabular.yaml``: diabetes, sex)? Each attack is applied alike to the original and the
unlearned model; prints the forget share / leakage AUC after each attack and the attack time against
the unlearning time.

    python benchmarks/bench_robustness_families.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from otu.runtime.experiment import run_experiment
from otu.spec import load_yaml, parse_experiment

REPO = Path(__file__).resolve().parents[1]
RELEARN = [
    {"attack": "relearn", "name": f"k{k}_s{s}", "shots": k, "steps": s} for k, s in ((1, 100), (10, 100), (10, 300))
]
PROBES = [
    {"attack": "probe", "name": f"{c}_k{k}", "shots": k, "classifier": c}
    for k in (20, 60) for c in ("mlp", "logistic")
]  # fmt: skip


def run(spec: str, attacks: list[dict], root: Path) -> tuple[dict, dict]:
    raw = load_yaml(REPO / "sweeps/experiments" / spec)
    raw["eval"] = {**raw.get("eval", {}), "plots": False, "robustness": attacks}
    raw["tracking"] = {"cache_dir": str(root / "cache")}
    result = run_experiment(parse_experiment(raw), root / spec.removesuffix(".yaml"))
    return result.metrics, result.timings


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="otu-robust-families-"))
    metrics, timings = run("uot_digits.yaml", RELEARN, root)
    print(f"uot_digits: forget_share (unlearn {timings['unlearn_s']:.0f} s, attacks {timings['attack_s']:.0f} s)")
    print(f"  {'attack':<10} {'original':>9} {'unlearned':>10} {'recovery':>9}")
    print(f"  {'clean':<10} {metrics['original']['forget_share']:>9.3f} {metrics['unlearned']['forget_share']:>10.3f}")
    for a in RELEARN:
        label = a["name"]
        recovery = metrics["unlearned"][f"recovery_forget_share@{label}"]
        original, unlearned = (metrics[f"{m}@{label}"]["forget_share"] for m in ("original", "unlearned"))
        print(f"  {label:<10} {original:>9.3f} {unlearned:>10.3f} {recovery:>9.2f}")
    metrics, timings = run("barycenter_tabular.yaml", PROBES, root)
    print(
        f"barycenter_tabular: leakage_auc (unlearn {timings['unlearn_s']:.1f} s, attacks {timings['attack_s']:.1f} s)"
    )
    print(f"  {'probe':<12} {'original':>9} {'unlearned':>10}")
    print(f"  {'clean':<12} {metrics['original']['leakage_auc']:>9.3f} {metrics['unlearned']['leakage_auc']:>10.3f}")
    for a in PROBES:
        original, unlearned = (metrics[f"{m}@{a['name']}"]["leakage_auc"] for m in ("original", "unlearned"))
        print(f"  {a['name']:<12} {original:>9.3f} {unlearned:>10.3f}")


if __name__ == "__main__":
    main()
