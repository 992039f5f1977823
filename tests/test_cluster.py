"""otu.cluster: job submission to a real token-auth `ray start --head`, jobs commands, failure
messages, DeepSpeed memory estimates and the scaling study."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from mlflow.tracking import MlflowClient
from ports import StartFailed, free_port, ray_head_command, start_on_free_ports

import otu.cli
from otu.cluster import client as cluster_client
from otu.cluster.submit import build_submission
from otu.errors import SpecError
from otu.scaling.estimate import PRESETS, estimate, estimate_table, resolve_models
from otu.scaling.report import scaling_markdown, zero3_vs_zero0
from otu.scaling.study import SPEC, Size, parse_size, plan, summarise
from otu.spec import parse_experiment

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "sweeps" / "quickstart.yaml"
GIB = 1024**3


@pytest.fixture()
def otu_main():
    return otu.cli.main


def tiny_llm(tmp_path: Path, **method) -> dict:
    return {
        "name": "optout-scale",
        "task": {
            "family": "llm",
            "data": {"synthetic": True},
            "model": {"tiny": {"layers": 2, "hidden": 64, "heads": 4, "intermediate": 128, "vocab": 400}, "epochs": 1},
        },
        "method": {"name": "optout", "steps": 2, "batch_size": 4, **method},
        "eval": {"plots": False},
        "tracking": {"cache_dir": str(tmp_path / "cache")},
    }


# ---------------------------------------------------------------- a real token-auth head


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head` on 127.0.0.1 with RAY_AUTH_MODE=token, its own ports and temp dir (so an
    embedded ``ray.init()`` elsewhere in the session never finds it), torn down by killing exactly
    the processes of the session it was started in."""
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)

    def start() -> tuple[Path, int | None, int]:
        temp_dir = Path(f"/tmp/otu-head-{secrets.token_hex(3)}")  # short: Ray's socket paths are limited
        dashboard = free_port()
        proc = subprocess.run(
            ray_start_command(temp_dir, dashboard),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            start_new_session=True,
        )
        session = _session_of_head(temp_dir)
        if proc.returncode != 0:
            _kill_session(session, temp_dir)
            raise StartFailed(proc.stdout + proc.stderr)
        return temp_dir, session, dashboard

    temp_dir, session, dashboard = start_on_free_ports(start, "ray start --head")
    try:
        yield {"address": f"http://127.0.0.1:{dashboard}", "token": token, "temp_dir": temp_dir}
    finally:
        _kill_session(session, temp_dir)


def ray_start_command(temp_dir: Path, dashboard: int) -> list[str]:
    """``ray start --head`` with fresh port numbers (:func:`ports.free_port`) and its own temp dir."""
    return ray_head_command(
        free_port(),
        *("--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard)),
        *("--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port())),
        *("--num-cpus", "2", "--object-store-memory", str(200 * 1024**2), "--temp-dir", str(temp_dir)),
    )


def _session_of_head(temp_dir: Path) -> int | None:
    for p in psutil.process_iter(["cmdline"]):
        if any(str(temp_dir) in part for part in (p.info["cmdline"] or [])):
            return os.getsid(p.pid)
    return None


def _kill_session(session: int | None, temp_dir: Path) -> None:
    """SIGTERM, then SIGKILL, every process of the head's session (ray start made a new one)."""
    if session is None or session == os.getsid(0):
        shutil.rmtree(temp_dir, ignore_errors=True)
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        procs = [p for p in psutil.process_iter() if _sid(p.pid) == session]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        psutil.wait_procs(procs, timeout=10)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def test_submit_wait_runs_the_sweep_and_logs_trials_to_mlflow(ray_head, otu_main, tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    out = tmp_path / "sweep"
    code = otu_main(
        [
            "submit",
            str(QUICKSTART),
            "--working-dir",
            str(REPO),
            "--address",
            ray_head["address"],
            "--token",
            ray_head["token"],
            "--no-install",
            "--wait",
            "--tracking-uri",
            f"sqlite:///{db}",
            "--out",
            str(out),
            "--set",
            "search.num_samples=2",
            "--set",
            "search.max_concurrent=2",
            "--set",
            "experiment.task.model.epochs=2",
            "--set",
            "experiment.task.data.forget_size=30",
            "--set",
            "experiment.method.perturb_steps=1",
            "--set",
            f"experiment.tracking.cache_dir={tmp_path / 'cache'}",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    job_id = captured.out.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_") and "SUCCEEDED" in captured.err

    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 2 and (trials["status"] == "TERMINATED").all()
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2
    assert all("test_acc" in r.data.metrics and "forgetting_score" in r.data.metrics for r in children)

    # the job is visible to the jobs commands, with otu's metadata
    assert otu_main(["jobs", "list", "--address", ray_head["address"], "--token", ray_head["token"]]) == 0
    listing = capsys.readouterr().out
    assert job_id in listing and "SUCCEEDED" in listing and "sweep quickstart" in listing
    assert otu_main(["jobs", "status", job_id, "--address", ray_head["address"], "--token", ray_head["token"]]) == 0
    status = capsys.readouterr().out
    assert f"{job_id}: SUCCEEDED" in status and f"results: {out}" in status
    assert otu_main(["jobs", "logs", job_id, "--address", ray_head["address"], "--token", ray_head["token"]]) == 0
    logs = capsys.readouterr().out
    assert "sweep quickstart" in logs and "done in" in logs  # the job's own output, start to end


def test_bad_token_and_missing_token_fail_fast(ray_head, otu_main, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    base = [
        "submit",
        str(QUICKSTART),
        "--working-dir",
        str(REPO),
        "--address",
        ray_head["address"],
        "--no-install",
        "--out",
        str(tmp_path / "sweep"),
        "--tracking-uri",
        "http://mlflow:5000",
    ]

    start = time.perf_counter()
    assert otu_main([*base, "--token", "not-the-token"]) == 2
    err = capsys.readouterr().err
    assert "--token" in err and "rejected the token" in err and "403" in err
    assert otu_main(base) == 2
    err = capsys.readouterr().err
    assert "requires token authentication and no token was given" in err
    token_file = tmp_path / "token"
    token_file.write_text(ray_head["token"] + "\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    assert otu_main(["jobs", "list", "--address", ray_head["address"]]) == 0  # token from the file
    assert time.perf_counter() - start < 20
    assert otu_main(["jobs", "status", "raysubmit_nosuchjob", "--address", ray_head["address"]]) == 2
    assert "job raysubmit_nosuchjob: no such job" in capsys.readouterr().err


def test_stop_a_running_job(ray_head, otu_main, tmp_path, capsys):
    auth = ["--address", ray_head["address"], "--token", ray_head["token"]]
    code = otu_main(
        [
            "submit",
            str(QUICKSTART),
            "--working-dir",
            str(REPO),
            *auth,
            "--no-install",
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--out",
            str(tmp_path / "sweep"),
            "--set",
            f"experiment.tracking.cache_dir={tmp_path / 'cache'}",
        ]
    )
    assert code == 0
    job_id = capsys.readouterr().out.splitlines()[0].strip()
    assert otu_main(["jobs", "stop", job_id, *auth]) == 0
    assert f"job {job_id}: STOPPED" in capsys.readouterr().err


# ---------------------------------------------------------------- failing fast without a cluster


def test_unreachable_address_fails_fast(otu_main, capsys):
    port = free_port()  # nothing listens here
    start = time.perf_counter()
    assert (
        otu_main(
            [
                "submit",
                str(QUICKSTART),
                "--working-dir",
                str(REPO),
                "--no-install",
                "--address",
                f"http://127.0.0.1:{port}",
                "--out",
                "/shared/q",
                "--tracking-uri",
                "http://mlflow:5000",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"cannot connect to the Ray dashboard at http://127.0.0.1:{port}" in err
    assert "connection refused" in err
    assert otu_main(["jobs", "list", "--address", "127.0.0.1:8265"]) == 2
    assert "expected the head's dashboard URL" in capsys.readouterr().err
    assert time.perf_counter() - start < 10


def test_silent_server_times_out_with_a_precise_message(monkeypatch):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()
    monkeypatch.setattr(cluster_client, "PROBE_TIMEOUT_S", 1.0)
    address = f"http://127.0.0.1:{server.getsockname()[1]}"
    start = time.perf_counter()
    with pytest.raises(cluster_client.ClusterError, match="accepted the connection but sent no answer within 1 s"):
        cluster_client.connect(address, None)
    assert time.perf_counter() - start < 5
    server.close()


def test_missing_spec_and_bad_override_fail_before_contacting_the_cluster(otu_main, tmp_path, capsys):
    unreachable = ["--address", f"http://127.0.0.1:{free_port()}"]
    assert otu_main(["submit", str(tmp_path / "nope.yaml"), *unreachable]) == 2
    assert f"spec file not found: {tmp_path / 'nope.yaml'}" in capsys.readouterr().err
    assert (
        otu_main(
            ["submit", str(QUICKSTART), "--working-dir", str(REPO), *unreachable, "--set", "experiment.method.alpha=-1"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "method.alpha" in err and "cannot connect" not in err


def test_submission_dry_run_describes_the_job(tmp_path):
    sub = build_submission(
        QUICKSTART,
        ["search.num_samples=2"],
        working_dir=REPO,
        tracking_uri="http://mlflow:5000",
        env=["OMP_NUM_THREADS=1"],
        out="/shared/quickstart",
    )
    assert sub.kind == "sweep" and sub.name == "quickstart"
    assert sub.entrypoint == (
        "python -m otu.cli sweep sweeps/quickstart.yaml --set search.num_samples=2 "
        "--tracking-uri http://mlflow:5000 --out /shared/quickstart"
    )
    env = sub.runtime_env
    assert env["working_dir"] == str(REPO) and ".venv" in env["excludes"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["env_vars"]["OMP_NUM_THREADS"] == "1"
    assert Path(env["py_modules"][0]).name == "otu"
    assert "torch==2.13.0" in env["pip"]["packages"] and not any("pytest" in p for p in env["pip"]["packages"])
    assert sub.metadata["otu.kind"] == "sweep" and sub.metadata["otu.spec"] == "sweeps/quickstart.yaml"

    durable = {"tracking_uri": "http://mlflow:5000", "out": "/shared/quickstart"}
    bare = build_submission(QUICKSTART, working_dir=REPO, install=False, **durable)
    assert "pip" not in bare.runtime_env and "py_modules" not in bare.runtime_env

    with pytest.raises(SpecError, match="outside the working directory"):
        build_submission(QUICKSTART, working_dir=tmp_path, **durable)
    with pytest.raises(SpecError, match="--tracking-uri: 'sqlite:///mlflow.db' is a relative path"):
        build_submission(QUICKSTART, working_dir=REPO, tracking_uri="sqlite:///mlflow.db", out="/shared/q")
    with pytest.raises(SpecError, match="--env: expected NAME=VALUE"):
        build_submission(QUICKSTART, working_dir=REPO, env=["oops"], **durable)


def test_runtime_env_file_matches_what_submit_sends():
    """clusters/runtime_env.yaml (for `ray job submit --runtime-env`) lists otu's dependencies."""
    import yaml

    doc = yaml.safe_load((REPO / "clusters" / "runtime_env.yaml").read_text())
    sub = build_submission(QUICKSTART, working_dir=REPO, tracking_uri="http://otu-mlflow:5000", out="/shared/q")
    assert doc["pip"]["packages"] == sub.runtime_env["pip"]["packages"]
    assert doc["excludes"] == sub.runtime_env["excludes"]
    assert doc["py_modules"] == ["platform/otu"]


@pytest.mark.parametrize("name", ["aws", "gcp", "onprem"])
def test_launcher_configs_pass_rays_schema_with_token_auth_and_mlflow(name):
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "clusters" / f"{name}.yaml").read_text())
    validate_config(prepare_config(raw))
    head = " ".join(raw["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in " ".join(raw["worker_start_ray_commands"])
    assert "mlflow server" in head and "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in head
    assert "--host 127.0.0.1" in head and "0.0.0.0 --port" not in head  # no unauthenticated MLflow outside
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/otu-cluster-token"


def test_kuberay_manifests_run_an_otu_sweep_with_token_auth():
    import shlex

    import ray
    import yaml

    job = yaml.safe_load((REPO / "clusters" / "kuberay" / "rayjob.yaml").read_text())
    cluster = yaml.safe_load((REPO / "clusters" / "kuberay" / "raycluster.yaml").read_text())
    mlflow = list(yaml.safe_load_all((REPO / "clusters" / "kuberay" / "mlflow.yaml").read_text()))
    assert (job["kind"], cluster["kind"]) == ("RayJob", "RayCluster")
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == cluster["spec"]["rayVersion"] == ray.__version__
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "otu.cli"]
    args = otu.cli.build_parser().parse_args(argv[3:])
    assert args.command == "sweep" and (REPO / args.spec).is_file()
    service = next(d for d in mlflow if d["kind"] == "Service")["metadata"]["name"]
    assert next(d for d in mlflow if d["kind"] == "Service")["spec"]["type"] == "ClusterIP"
    assert any(d["kind"] == "NetworkPolicy" for d in mlflow)
    for spec in (job["spec"]["rayClusterSpec"], cluster["spec"]):
        head_env = {e["name"]: e for e in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
        assert head_env["RAY_AUTH_MODE"]["value"] == "token"
        assert head_env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "otu-ray-auth"
        assert head_env["MLFLOW_TRACKING_URI"]["value"] == f"http://{service}:5000"
    submitter_env = {e["name"] for e in job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= submitter_env


# ---------------------------------------------------------------- estimates


def test_llama_presets_have_their_published_sizes():
    expected = {
        "llama-3.2-1b": 1_235_814_400,
        "llama-3.2-3b": 3_212_749_824,
        "llama-3.1-8b": 8_030_261_248,
        "llama-2-13b": 13_015_864_320,
        "llama-3.1-70b": 70_553_706_496,
    }  # the checkpoints' counts
    for name, count in expected.items():
        assert PRESETS[name].params == count, name


def test_estimates_are_deepspeeds_and_zero3_is_smallest():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    m = PRESETS["llama-3.1-8b"]
    rows = {(e.zero_stage, e.offload): e for e in estimate_table([m], gpus_per_node=8, nodes=1)}
    cpu, gpu = estimate_zero2_model_states_mem_needs(m.params, 8, 1, cpu_offload=False)
    assert rows[(2, "none")].gpu_gb == pytest.approx(gpu / GIB) and rows[(2, "none")].cpu_gb == pytest.approx(cpu / GIB)
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
        m.params, m.largest_layer_params, 8, 1, cpu_offload=False, cpu_offload_params=False
    )
    assert rows[(3, "none")].gpu_gb == pytest.approx(gpu / GIB)
    # ZeRO-0 holds 20 bytes per parameter, nothing partitioned
    assert rows[(0, "none")].gpu_gb == pytest.approx(20 * m.params / GIB)
    totals = [rows[(s, "none")].total_gpu_gb for s in (0, 1, 2, 3)]
    assert totals == sorted(totals, reverse=True)
    assert rows[(3, "params")].total_gpu_gb < rows[(3, "optimizer")].total_gpu_gb < rows[(3, "none")].total_gpu_gb
    # 8B fits on 80 GB GPUs only from ZeRO-2 on; 70B needs ZeRO-3 with offload
    assert rows[(1, "none")].total_gpu_gb > 74 > rows[(2, "none")].total_gpu_gb
    big = {(e.zero_stage, e.offload): e for e in estimate_table([PRESETS["llama-3.1-70b"]], 8, 1)}
    assert big[(3, "none")].total_gpu_gb > 74 > big[(3, "optimizer")].total_gpu_gb
    with pytest.raises(SpecError, match="no estimate for ZeRO-0"):
        estimate(m.params, m.largest_layer_params, 0, "optimizer", 8, 1)


def test_estimate_cli_writes_table_and_plot(otu_main, tmp_path, capsys):
    config = tmp_path / "ckpt" / "config.json"
    config.parent.mkdir()
    config.write_text(
        json.dumps(
            {
                "vocab_size": 32000,
                "hidden_size": 4096,
                "num_hidden_layers": 32,
                "intermediate_size": 11008,
                "num_attention_heads": 32,
            }
        )
    )
    code = otu_main(
        [
            "scale",
            "--estimate",
            "--models",
            f"llama-3.1-8b,13B,{config.parent}",
            "--gpus-per-node",
            "4",
            "--out",
            str(tmp_path / "est"),
        ]
    )
    assert code == 0
    df = pd.read_parquet(tmp_path / "est" / "scaling.parquet")
    assert set(df["size"]) == {"llama-3.1-8b", "13B", "ckpt"} and set(df["kind"]) == {"estimate"}
    assert df.loc[df["size"] == "ckpt", "params"].iloc[0] == pytest.approx(6.74e9, rel=1e-3)  # Llama-2-7B
    assert (tmp_path / "est" / "scaling.png").stat().st_size > 10_000
    assert "| llama-3.1-8b | 8.03B | 3 | 4 | params |" in capsys.readouterr().out
    assert otu_main(["scale", "--estimate", "--models", "huge-model"]) == 2
    assert "--models: 'huge-model' is not a preset" in capsys.readouterr().err
    assert resolve_models(["1.5e9"])[0].params == 1_500_000_000


# ---------------------------------------------------------------- scaling study


def test_plan_validates_every_combination(tmp_path):
    exp = parse_experiment(tiny_llm(tmp_path))
    items = plan(exp, [Size("s", ())], [0, 3], [1, 2], ["none", "optimizer", "params"], steps=2)
    keys = [c.key for c, _ in items]
    assert keys == [
        "s-z0-w1-none",
        "s-z0-w2-none",
        "s-z3-w1-none",
        "s-z3-w1-optimizer",
        "s-z3-w1-params",
        "s-z3-w2-none",
        "s-z3-w2-optimizer",
        "s-z3-w2-params",
    ]
    combo, e = items[-1]
    assert (e.compute.zero_stage, e.compute.workers, e.compute.offload, e.method.steps) == (3, 2, "params", 2)
    with pytest.raises(SpecError, match=r"s-z0-w3-none: method.batch_size: 4 is not divisible"):
        plan(exp, [Size("s", ())], [0], [3], ["none"], steps=2)
    with pytest.raises(SpecError, match=r"task.model.tiny.hiden"):
        plan(exp, [parse_size("bad:task.model.tiny.hiden=32")], [0], [1], ["none"], steps=2)
    with pytest.raises(SpecError, match="--size: expected LABEL:KEY=VALUE"):
        parse_size("task.model.tiny.hidden=32")
    variants = [SPEC, parse_size("l200:method.n_projections=200", "--variant")]
    items = plan(exp, [Size("s", ())], [0], [1], ["none"], steps=2, variants=variants)
    assert [c.key for c, _ in items] == ["s-z0-w1-none", "s-z0-w1-none-l200"]
    assert [e.method.n_projections for _, e in items] == [100, 200]
    with pytest.raises(SpecError, match="--variant: expected LABEL:KEY=VALUE"):
        parse_size("method.n_projections=5", "--variant")


def test_summarise_and_table_report_zero3_saving():
    ranks = [
        {
            "rank": r,
            "world": 2,
            "baseline_rss_bytes": 1 * GIB,
            "peak_rss_bytes": (3 + r) * GIB,
            "gpu_peak_bytes": None,
            "steps": [
                {"step": 0, "step_time_s": 9.0, "reg_time_s": 1.0, "tokens": 100.0},
                {"step": 1, "step_time_s": 2.0, "reg_time_s": 0.5, "tokens": 100.0},
            ]
            if r == 0
            else [],
        }
        for r in range(2)
    ]
    s = summarise(ranks)
    assert s["peak_rss_gib"] == 4.0 and s["loop_rss_gib"] == 3.0
    assert s["step_time_s"] == 2.0 and s["sw_share"] == 0.25  # warm-up step 0 excluded
    assert s["tokens_per_s"] == 100.0  # 100 tokens per rank × 2 ranks / 2 s
    base = {
        "size": "m",
        "params": 10**8,
        "largest_tensor": 10**7,
        "workers": 2,
        "offload": "none",
        "status": "ok",
        "error": "",
        "device": "cpu",
        "precision": "fp32",
    }
    df = pd.DataFrame(
        [
            {**base, **s, "zero_stage": 0, "estimate_gib": 1.0},
            {**base, **s, "zero_stage": 3, "peak_rss_gib": 3.0, "estimate_gib": 0.5},
        ]
    )
    cmp = zero3_vs_zero0(df)
    assert cmp["saved_mib"].iloc[0] == pytest.approx(1024.0) and cmp["saved_pct"].iloc[0] == pytest.approx(25.0)
    assert "ZeRO-3 3.000 GiB vs ZeRO-0 4.000 GiB — 1024 MiB (25.0 %) below ZeRO-0" in scaling_markdown(df)


def test_scale_cli_measures_one_combination(otu_main, tmp_path, capsys):
    import yaml

    spec = tmp_path / "optout.yaml"
    spec.write_text(yaml.safe_dump(tiny_llm(tmp_path)))
    out = tmp_path / "scale"
    assert (
        otu_main(
            ["scale", str(spec), "--zero", "0", "--workers", "1", "--steps", "2", "--models", "13B", "--out", str(out)]
        )
        == 0
    )
    df = pd.read_parquet(out / "scaling.parquet")
    row = df.iloc[0]
    assert row["status"] == "ok", row["error"]
    assert row["params"] > 50_000 and row["peak_rss_gib"] >= row["baseline_rss_gib"] > 0.05
    assert row["step_time_s"] > 0 and 0 < row["sw_share"] < 1 and row["steps"] == 2
    assert (out / "scaling.png").stat().st_size > 10_000  # measured and estimated in one figure
    table = capsys.readouterr().out
    assert "| spec | " in table and "| 0 | 1 | none | spec | " in table
    assert "| 13B | 13.00B | 3 | 8 | none |  | – |" in table  # DeepSpeed's estimate, same table
    # `otu scale --estimate` into the study's directory: its rows join the same table and plot
    assert (
        otu_main(["scale", "--estimate", "--models", "llama-3.2-1b,13B", "--gpus-per-node", "8", "--out", str(out)])
        == 0
    )
    df = pd.read_parquet(out / "scaling.parquet")
    assert (df["kind"] == "measured").sum() == 1 and df.loc[df["kind"] == "measured", "step_time_s"].iloc[0] > 0
    estimates = df[df["kind"] == "estimate"]
    assert set(estimates["size"]) == {"llama-3.2-1b", "13B"}
    assert not estimates.duplicated(["size", "zero_stage", "offload", "workers"]).any()  # 13B replaced, not doubled
    assert (estimates["estimate_gib"] > 0).all() and (estimates["host_gib"] > 0).all()
    md = (out / "scaling.md").read_text()
    assert "| 0 | 1 | none | spec | " in md and "| llama-3.2-1b | 1.24B | 3 | 8 | none |  | – |" in md
    assert (out / "scaling.png").stat().st_size > 10_000


ZERO3_LIMITS = {  # DeepSpeed's ZeRO-3 gather/bucket limits at the scale of a 62M model (docs/scaling.md)
    "max_live_parameters": 2_000_000,
    "prefetch_bucket_size": 2_000_000,
    "reduce_bucket_size": 2_000_000,
    "max_reuse_distance": 0,
    "param_persistence_threshold": 10_000,
}


@pytest.mark.slow
def test_zero3_uses_less_memory_per_worker_than_zero0_on_two_cpu_workers(tmp_path):
    """The must-hold: 2 CPU workers, the same 62M-parameter model, ZeRO-3 per-worker peak below
    ZeRO-0's (measured here: 1.672 vs 1.977 GiB). Needs the ZeRO-3 limits in the spec: with
    DeepSpeed's defaults every rank keeps the whole gathered model (+275 MiB over ZeRO-0)."""
    from otu.scaling.study import run_study

    raw = tiny_llm(tmp_path)
    raw["task"]["model"]["tiny"] = {"layers": 8, "hidden": 768, "heads": 12, "intermediate": 2304, "vocab": 512}
    raw["compute"] = {"zero3": ZERO3_LIMITS}
    items = plan(parse_experiment(raw), [Size("62m", ())], [0, 3], [2], ["none"], steps=2)
    df = run_study(items, tmp_path / "scale", timeout_s=1200)
    assert (df["status"] == "ok").all(), df["error"].tolist()
    cmp = zero3_vs_zero0(df)
    assert len(cmp) == 1 and cmp["saved_mib"].iloc[0] > 100, cmp.to_dict("records")
