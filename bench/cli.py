"""python -m bench [--quick] [--out DIR] [--only a,b] [--data-dir DIR]"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from . import ablations, at_step, attack, data_path, federated, flops, objectives
from .fixtures import DEFAULT_DATA, DEFAULT_OUT, Options
from .result import Result, write
from .timing import torch_threads

BENCHMARKS = {  # name -> run(opts) -> Result | list[Result]
    "at_step": at_step.run,
    "data_path": data_path.run,
    "attack": attack.run,
    "ablations": ablations.run,
    "objectives": objectives.run,  # each training objective's step over the mixed step
    "flops": flops.run,
    "federated": federated.run,  # also yields the memory result
}
# These use every core: the CPU-hours estimate, and the one-process yardstick of the
# federation (whose actors share the same cores). The rest run with --threads.
ALL_CORES = {"flops", "federated"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="fewer repetitions, one federated configuration (K=5, width 8)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                   help="folder holding cifar-10-batches-py/ (default: the shared subset)")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads of the single-process benchmarks (default 1, as a "
                        "client actor with cpus-per-client 1); federated and flops use all "
                        "cores")
    return p


def _environment() -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(),
            "cpus": len(_affinity()),
            "machine": platform.machine(), "load_average": _loadavg()}


def _affinity() -> set[int]:
    import os

    return os.sched_getaffinity(0)


def _loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = set(chosen) - set(BENCHMARKS)
    if unknown:
        print(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    if not (args.data_dir / "cifar-10-batches-py").is_dir():
        print(f"no CIFAR-10 at {args.data_dir} (needs cifar-10-batches-py/); pass --data-dir")
        return 2
    opts = Options(quick=args.quick, data_dir=args.data_dir.resolve(), out=args.out.resolve(),
                   threads=args.threads)
    started = time.perf_counter()
    results: list[Result] = []
    env_before = _environment()
    busy = env_before["load_average"] and env_before["load_average"][0] > env_before["cpus"]
    if busy:  # ratios still hold on average, single timings do not
        print(f"warning: load average {env_before['load_average'][0]:.1f} > "
              f"{env_before['cpus']} CPUs: other work shares this machine", flush=True)
    for name in chosen:
        t0 = time.perf_counter()
        with torch_threads(None if name in ALL_CORES else opts.threads):
            produced = BENCHMARKS[name](opts)
        for result in produced if isinstance(produced, list) else [produced]:
            result.seconds = result.seconds or time.perf_counter() - t0
            write(result, opts.out)
            results.append(result)
            print(result.headline(), flush=True)
    total = time.perf_counter() - started
    summary = {"quick": opts.quick, "seconds": total, "environment_start": env_before,
               "environment_end": _environment(),
               "results": {r.name: {"ratio": r.ratio, "target": r.target,
                                    "direction": r.direction, "met": r.met} for r in results}}
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# RobustFL benchmarks ({'quick' if opts.quick else 'full'})", "",
             f"Total {total:.0f} s; load average {env_before['load_average']} at start, "
             f"{summary['environment_end']['load_average']} at end; torch "
             f"{env_before['torch']}; single-process benchmarks at {opts.threads} thread(s), "
             f"federated and flops on all {env_before['cpus']} cores.", ""]
    lines += [f"- {r.headline()}" for r in results] + [""]
    lines += [r.to_markdown() for r in results]
    (opts.out / "summary.md").write_text("\n".join(lines))
    print(f"total {total:.0f} s; results in {opts.out}/summary.md")
    return 0
