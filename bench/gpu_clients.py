"""How many clients should share one GPU: train()'s images/s summed over k client processes
training side by side on the same device, for each k.

    python -m bench.gpu_clients --out DIR [--clients 1,2,4,8,16]   # on a CUDA GPU, ~3 minutes
    python -m bench.gpu_clients --dry-run --out DIR                # the same code on the CPU

The simulation runs every client in its own process, and `--gpus-per-client G` lets 1/G of
them share a GPU. At the paper preset's batch of 128 one process keeps an H200 busy only a
fraction of the time (kernel launches, not arithmetic, bound it), so clients side by side
should add throughput; this measures how much. Each of the k processes builds the preset's
model on its own, trains `--warmup` untimed steps, waits for the others at a barrier, then
times `--steps` steps of `common.training.train` on the path train() takes there
(channels_last + bf16 on CUDA). The aggregate is k x steps x batch images over the time from
the barrier to the last process's end. Only torch, numpy and common/ run: no Flower, no Ray.
Writes DIR/gpu_clients.json and DIR/gpu_clients.md; an existing gpu_clients.json is never
overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import torch

from common import protocol
from common.models import model_from_config
from common.training import FastPath, make_optimizer, train

from .fixtures import DEFAULT_OUT, preset_config
from .result import fmt, markdown_table

DRY_RUN_SETS = ("model.width=8", "train.batch-size=8", "attack.steps=2")
WAIT_S = 600  # the longest any process waits at the barrier or for a result


def _client(rank: int, device: str, sets: tuple[str, ...], warmup: int, steps: int,
            barrier, results) -> None:
    """One client process: the preset's round-1 training, `steps` timed steps."""
    try:
        if device == "cpu":  # spinning OpenMP threads of k processes stall a shared CPU
            torch.set_num_threads(1)
        cfg = preset_config("paper", *sets)
        dev = torch.device(device)
        settings = dataclasses.replace(protocol.train_settings(cfg, 1), epochs=1)
        fast = FastPath.for_device(dev, settings.amp)
        torch.manual_seed(rank)
        model = model_from_config(cfg).to(dev)
        if fast.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = make_optimizer(model, settings)
        batch = cfg.train.batch_size
        n = max(warmup, steps) * batch
        gen = torch.Generator().manual_seed(rank)
        x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen).to(dev)
        y = torch.randint(0, 10, (n,), generator=gen).to(dev)
        if warmup:
            train(model, x[:warmup * batch], y[:warmup * batch], settings, seed=0,
                  optimizer=optimizer, fast=fast)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        barrier.wait(timeout=WAIT_S)
        start = time.time()
        train(model, x[:steps * batch], y[:steps * batch], settings, seed=1,
              optimizer=optimizer, fast=fast)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        results.put({"rank": rank, "start": start, "end": time.time(), "batch": batch})
    except Exception as exc:  # the parent reports it; a dead client must not hang the others
        barrier.abort()
        results.put({"rank": rank, "error": f"{type(exc).__name__}: {exc}"})


def side_by_side(k: int, device: str, sets: tuple[str, ...], warmup: int, steps: int) -> dict:
    """The aggregate images/s of k client processes training at once."""
    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    barrier, results = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=_client, args=(r, device, sets, warmup, steps, barrier, results))
             for r in range(k)]
    for p in procs:
        p.start()
    try:
        rows = [results.get(timeout=WAIT_S) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        return {"clients": k, "status": "error", "error": "; ".join(sorted(set(errors)))}
    wall = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    per_client = [steps * r["batch"] / (r["end"] - r["start"]) for r in rows]
    return {"clients": k, "status": "ok", "seconds": wall,
            "images_per_s": k * steps * rows[0]["batch"] / wall,
            "per_client_images_per_s": min(per_client)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_clients", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT / "gpu")
    p.add_argument("--clients", default=None,
                   help="comma-separated numbers of processes (default 1,2,4,8,16; dry run 1,2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5; dry 1)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; dry 2)")
    p.add_argument("--dry-run", action="store_true",
                   help="run the same code on the CPU at width 8 (the figures mean nothing)")
    return p


def _clients(text: str) -> list[int]:
    try:
        ks = [int(v) for v in text.split(",")]
    except ValueError:
        ks = []
    if not ks or min(ks) < 1:
        raise ValueError(f"--clients must be positive integers separated by commas, got {text!r}")
    return ks


def to_markdown(report: dict) -> str:
    rows = [{"clients side by side": r["clients"],
             "images/s, all clients": fmt(r.get("images_per_s")),
             f"x {report['results'][0]['clients']} client(s)": fmt(r.get("speedup")),
             "images/s, slowest client": fmt(r.get("per_client_images_per_s")),
             "status": r["status"] if r["status"] == "ok" else r["error"]}
            for r in report["results"]]
    where = "DRY RUN on the CPU" if report["dry_run"] else report["gpu"]
    return "\n".join([f"# Clients sharing one GPU ({where})", "",
                      f"`{report['command']}`, {report['started']}; {report['settings']}.", "",
                      *markdown_table(rows)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    dry = args.dry_run
    try:
        ks = _clients(args.clients or ("1,2" if dry else "1,2,4,8,16"))
        if args.steps is not None and args.steps < 1 or args.warmup is not None and args.warmup < 0:
            raise ValueError("--steps must be >= 1 and --warmup >= 0")
        if not dry and not torch.cuda.is_available():
            raise ValueError("no CUDA device visible; --dry-run rehearses this on the CPU")
        if (args.out / "gpu_clients.json").exists():
            raise ValueError(f"{args.out / 'gpu_clients.json'} holds an earlier run's results; "
                             "pass another --out or move it away")
    except ValueError as exc:
        print(f"bench.gpu_clients: {exc}", file=sys.stderr)
        return 2
    warmup = args.warmup if args.warmup is not None else (1 if dry else 5)
    steps = args.steps if args.steps is not None else (2 if dry else 20)
    sets = DRY_RUN_SETS if dry else ()
    cfg = preset_config("paper", *sets)
    report = {"command": " ".join(["python -m bench.gpu_clients",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "dry_run": dry, "started": datetime.datetime.now().isoformat(timespec="seconds"),
              "gpu": None if dry else torch.cuda.get_device_name(0),
              "torch": torch.__version__,
              "settings": f"width {cfg.model.width}, batch {cfg.train.batch_size}, "
                          f"PGD-{cfg.attack.steps} + noise + clean; {warmup} warm-up and "
                          f"{steps} timed steps per client", "results": []}
    args.out.mkdir(parents=True, exist_ok=True)
    for k in ks:
        row = side_by_side(k, "cpu" if dry else "cuda", sets, warmup, steps)
        first = report["results"][0] if report["results"] else row
        if row["status"] == "ok" and first["status"] == "ok":
            row["speedup"] = row["images_per_s"] / first["images_per_s"]
        report["results"].append(row)
        print(f"{k} clients: " + (f"{row['images_per_s']:.0f} images/s" if row["status"] == "ok"
                                  else row["error"]), flush=True)
        for name, text in (("gpu_clients.json", json.dumps(report, indent=2) + "\n"),
                           ("gpu_clients.md", to_markdown(report))):
            tmp = args.out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(args.out / name)
    return 0 if all(r["status"] == "ok" for r in report["results"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
