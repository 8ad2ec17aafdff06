"""The GPU check (`python -m bench.gpu`) rehearsed on the CPU: `--dry-run` runs every
measurement's code at width 8 and must record every figure, or say why it could not."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
import torch

from bench import gpu, gpu_clients
from bench.fixtures import preset_config

from .conftest import DATA_DIR, ROOT

# measurement -> figures it must hold as finite numbers (dotted paths into its dict)
FIGURES = {
    "train_step": ["variants.fp32 NCHW.images_per_s",
                   "variants.channels_last + bf16.images_per_s",
                   "variants.channels_last + bf16.ms_per_step", "speedup_of_channels_last_bf16"],
    "train_step_compiled": ["variants.fp32 NCHW.images_per_s",
                            "variants.channels_last + bf16.images_per_s",
                            "speedup_of_channels_last_bf16"],
    "efficiency": ["ratio", "cpu_reference", "train.ms_per_step", "bare.ms_per_step"],
    "eval_attacks": ["pgd.images_per_s", "pgd.us_per_image_pass", "eot_pgd.images_per_s",
                     "eot_pgd.samples"],
    "bf16_vs_fp32": ["loss_fp32", "loss_bf16", "loss_abs_diff", "loss_rel_diff",
                     "adv_pixels_differing", "adv_max_abs_diff", "adv_mean_abs_diff_in_steps"],
    "paper_estimate": ["images_per_round", "local_epochs", "rounds", "clients",
                       "train_images_per_s", "train_hours", "eval_gradient_passes_per_image",
                       "eval_hours", "total_hours"],
}
CUDA_ONLY = ("peak_memory", "sync_free_pgd")  # the CPU rehearsal records them as skipped


def _get(d: dict, path: str):
    for part in path.split("."):
        d = d[part]
    return d


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run, as a user starts it; (its report, its output folder, its wall time)."""
    out = tmp_path_factory.mktemp("gpu") / "out"
    argv = [sys.executable, "-m", "bench.gpu", "--dry-run", "--out", str(out)]
    if (DATA_DIR / "cifar-10-batches-py").is_dir():
        argv += ["--data-dir", str(DATA_DIR)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "gpu.json").read_text()), out


def test_dry_run_records_every_figure(dry_run):
    report, _ = dry_run
    m = report["measurements"]
    assert report["dry_run"] and report["settings"]["width"] == 8
    assert list(m) == [*gpu.MEASUREMENTS, "paper_estimate"]
    for name, paths in FIGURES.items():
        assert m[name]["status"] == "ok", (name, m[name])
        for path in paths:
            value = _get(m[name], path)
            assert isinstance(value, (int, float)) and math.isfinite(value), (name, path, value)
    for name in CUDA_ONLY:
        assert m[name]["status"] == "skipped", (name, m[name])
        assert m[name]["reason"].startswith("not applicable on cpu: "), m[name]
    apgd = m["eval_attacks"]["apgd_ce"]  # pyautoattack is a test dependency
    assert apgd["status"] == "ok" and apgd["images_per_s"] > 0 and apgd["gradient_passes"] == 100
    assert m["train_step_compiled"]["backend"] == "eager"
    assert m["efficiency"]["cpu_reference"] == 0.969


def test_the_estimate_follows_the_preset(dry_run):
    """The workload, derived again from the preset by hand: CIFAR-10's 50,000 training
    images less the validation split and the shared pool, split among the clients, plus
    every client's share; each evaluation takes the validation split."""
    e = dry_run[0]["measurements"]["paper_estimate"]
    cfg = preset_config("paper")
    train = 50_000 - cfg.data.val_size
    pool = round(train * cfg.fl.shared_pool)
    share = round(cfg.fl.shared_share * pool)
    assert e["images_per_round"] == train - pool + cfg.fl.min_nodes * share  # 64,350
    assert e["eval_images"] == cfg.data.val_size  # 500: eval-limit 0 takes all of it
    assert (e["rounds"], e["local_epochs"]) == (cfg.fl.num_rounds, cfg.train.local_epochs)
    assert e["evaluations"] == cfg.fl.num_rounds // cfg.eval.every  # 20: every 5th round
    hours = e["rounds"] * e["images_per_round"] * e["local_epochs"] / e["train_images_per_s"]
    assert e["train_hours"] == pytest.approx(hours / 3600)
    assert e["total_hours"] == pytest.approx(e["train_hours"] + e["eval_hours"])


def test_dry_run_writes_the_markdown_table(dry_run):
    report, out = dry_run
    md = (out / "gpu.md").read_text()
    assert md.startswith("# GPU check (DRY RUN")
    assert "| measurement | figure | value |" in md
    for name in report["measurements"]:
        assert f"| {name} |" in md
    assert "| train_step | variants.channels_last + bf16.images_per_s |" in md


def test_importing_the_check_loads_neither_flower_nor_ray():
    code = ("import sys, bench.gpu; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('flwr', 'ray')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_the_time_budget_skips_the_rest_but_still_writes(tmp_path):
    """A budget spent early: what is left is skipped (or stopped, if it was running), and
    the report, saying so, is still written."""
    assert gpu.main(["--dry-run", "--out", str(tmp_path), "--budget", "0.5"]) == 0
    m = json.loads((tmp_path / "gpu.json").read_text())["measurements"]
    for name in ("bf16_vs_fp32", "train_step", "efficiency", "eval_attacks"):
        assert "time budget" in m[name].get("reason", m[name].get("error", "")), m[name]
    assert m["train_step_compiled"] == {"status": "skipped", "seconds": 0.0,
                                        "reason": "the time budget (--budget) was spent"}
    assert m["paper_estimate"]["status"] == "error"
    assert "needs train_step" in m["paper_estimate"]["error"]
    assert (tmp_path / "gpu.md").is_file()


def test_a_measurement_past_the_budget_is_stopped_and_recorded():
    started = time.perf_counter()
    result = gpu.guarded(time.sleep, 30, seconds_left=0.2)
    assert time.perf_counter() - started < 5
    assert result["status"] == "error" and "time budget" in result["error"]
    assert gpu.guarded(lambda: {"x": 1.0}, seconds_left=5) == {
        "status": "ok", "x": 1.0, "seconds": pytest.approx(0, abs=2)}
    failed = gpu.guarded(lambda: 1 / 0)
    assert failed["status"] == "error" and failed["error"].startswith("ZeroDivisionError")


def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys):
    earlier = tmp_path / "gpu.json"
    earlier.write_text("{}")
    assert gpu.main(["--dry-run", "--out", str(tmp_path)]) == 2
    assert "earlier run" in capsys.readouterr().err and earlier.read_text() == "{}"
    assert gpu.main(["--dry-run", "--out", str(tmp_path / "a"), "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    assert gpu.main(["--dry-run", "--out", str(tmp_path / "b"),
                     "--data-dir", str(tmp_path / "missing")]) == 2
    assert "--data-dir" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert gpu.main(["--out", str(tmp_path / "c")]) == 2
        assert "--dry-run" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_clients_side_by_side_rehearsed_on_the_cpu(tmp_path, capsys):
    """bench.gpu_clients' dry run: two real client processes train side by side; the row
    holds the aggregate and the slowest client's rate; bad arguments are refused before any
    work."""
    out = tmp_path / "clients"
    assert gpu_clients.main(["--dry-run", "--out", str(out), "--clients", "2", "--warmup", "0",
                             "--steps", "1"]) == 0
    report = json.loads((out / "gpu_clients.json").read_text())
    assert [r["clients"] for r in report["results"]] == [2]
    for row in report["results"]:
        assert row["status"] == "ok", row
        assert row["images_per_s"] >= row["per_client_images_per_s"] > 0
    assert report["results"][0]["speedup"] == 1.0
    assert "| 2 |" in (out / "gpu_clients.md").read_text()
    capsys.readouterr()
    assert gpu_clients.main(["--dry-run", "--out", str(out)]) == 2  # never overwritten
    assert "earlier run" in capsys.readouterr().err
    for bad in (["--clients", "0,2"], ["--clients", "two"], ["--steps", "0"]):
        assert gpu_clients.main(["--dry-run", "--out", str(tmp_path / "x"), *bad]) == 2
        assert "--" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
