"""Folders for a cross-silo federation (fl.client-data=local), cut from one copy of CIFAR-10.

    python -m deploy.split --data-dir /data/cifar10 --out /data/silos --clients 3 --partition iid
    python -m deploy.split --data-dir D --out OUT --clients 10 --partition dirichlet \\
        --dirichlet-alpha 0.5 --format npz

writes, into --out (which must not exist yet, or be empty):
  node-<i>/       the training images of node i and nothing else: cifar-10-batches-py/
                  data_batch_1 (the CIFAR-10 python layout) or train.npz (--format npz)
  server/         the server's data.dir: the training images no node holds (a class-balanced
                  --server-fraction of them; the server draws G and its validation split from
                  these) and the whole test set (central evaluation), in the CIFAR-10 layout
  manifest.json   the settings, and the images per class of every folder
The split is the project's own (common.partition.make_plan: the same schemes, seeds and
checks as fl.partition); the server's images are its held-back pool, so no image is in two
folders, whatever run config the federation then uses. Copy node-<i>/ to machine i and
server/ to the server, or try it all on one machine (docs/deploy.md, "Bring your own data").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from common.data import (BATCH_DIR, NUM_CLASSES, TEST_FILE, TRAIN_FILES, DataError,
                         load_cifar10, write_batch, write_npz)
from common.partition import SCHEMES, PartitionError, make_plan
from deploy.commands import local_node_config, node_name

FORMATS = ("cifar", "npz")
SERVER = "server"
MANIFEST = "manifest.json"
DEFAULT_SERVER_FRACTION = 0.2


class SplitError(ValueError):
    """The requested split cannot be written (bad arguments, data or output folder)."""


def per_class(labels: np.ndarray) -> list[int]:
    return np.bincount(labels, minlength=NUM_CLASSES).astype(int).tolist()


# make_plan's messages name run-config keys; here the same settings are these flags.
_FLAGS = {"fl.shared-pool": "--server-fraction", "data.train-limit": "--train-limit",
          "fl.min-partition-size": "--min-partition-size",
          "fl.dirichlet-alpha": "--dirichlet-alpha",
          "fl.classes-per-client": "--classes-per-client",
          "(--num-supernodes, or num-partitions in the node config)": "(--clients)"}


def _in_flags(message: str) -> str:
    for key, flag in _FLAGS.items():
        message = message.replace(key, flag)
    return message


def split(data_dir: str | os.PathLike, out: str | os.PathLike, clients: int, scheme: str, *,
          seed: int = 0, server_fraction: float = DEFAULT_SERVER_FRACTION,
          train_limit: int = 0, classes_per_client: int = 2, dirichlet_alpha: float = 0.5,
          min_partition_size: int = 10, fmt: str = "cifar") -> dict[str, Any]:
    """Write the folders (see the module doc) and return the manifest. Everything is checked
    and written into a temporary folder first, so a failure leaves `out` as it was."""
    out = Path(out).expanduser()
    if fmt not in FORMATS:
        raise SplitError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if clients < 1:
        raise SplitError(f"--clients {clients} must be at least 1")
    if not 0 < server_fraction < 1:
        raise SplitError(f"--server-fraction {server_fraction} must lie strictly between 0 "
                         "and 1: the server needs training images (G, validation), the nodes "
                         "the rest")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SplitError(f"{out} exists and is not an empty folder; choose a new --out "
                         "(nothing was written)")
    try:
        data = load_cifar10(data_dir)
        labels = data.train_y.numpy()
        plan = make_plan(labels, scheme, clients, seed, train_limit=train_limit,
                         shared_fraction=server_fraction, classes_per_client=classes_per_client,
                         dirichlet_alpha=dirichlet_alpha, min_partition_size=min_partition_size)
    except (DataError, PartitionError) as exc:
        raise SplitError(_in_flags(str(exc))) from None
    if plan.shared.size < len(TRAIN_FILES):
        used = min(train_limit, labels.size) if train_limit else labels.size
        raise SplitError(f"--server-fraction {server_fraction} of the {used:,} training images "
                         f"used leaves the server {plan.shared.size}, fewer than its "
                         f"{len(TRAIN_FILES)} batch files; raise --server-fraction or "
                         "--train-limit")
    empty = [i for i, p in enumerate(plan.partitions) if p.size == 0]
    if empty:
        raise SplitError(f"node(s) {empty} would get no images; use fewer --clients or "
                         "another --partition")
    held = np.concatenate([plan.shared, *plan.partitions])
    assert np.unique(held).size == held.size, "the split gave an image to two folders"

    x, test_x, test_y = data.train_x.numpy(), data.test_x.numpy(), data.test_y.numpy()
    manifest: dict[str, Any] = {
        "source": str(Path(data_dir).expanduser().resolve()),
        "settings": {"clients": clients, "partition": scheme, "seed": seed,
                     "server_fraction": server_fraction, "train_limit": train_limit,
                     "classes_per_client": classes_per_client,
                     "dirichlet_alpha": dirichlet_alpha,
                     "min_partition_size": min_partition_size, "format": fmt},
        "nodes": [], "server": {},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for i, idx in enumerate(plan.partitions):
            folder = tmp / node_name(i)
            if fmt == "npz":
                folder.mkdir()
                write_npz(folder / "train.npz", x[idx], labels[idx])
            else:
                (folder / BATCH_DIR).mkdir(parents=True)
                write_batch(folder / BATCH_DIR / TRAIN_FILES[0], x[idx], labels[idx],
                            f"robustfl {node_name(i)}")
            manifest["nodes"].append({"name": node_name(i), "folder": node_name(i),
                                      "images": int(idx.size),
                                      "per_class": per_class(labels[idx])})
        batches = tmp / SERVER / BATCH_DIR
        batches.mkdir(parents=True)
        # load_cifar10 reads the standard five training batches and the test batch.
        for name, idx in zip(TRAIN_FILES, np.array_split(plan.shared, len(TRAIN_FILES))):
            write_batch(batches / name, x[idx], labels[idx], f"robustfl server {name}")
        write_batch(batches / TEST_FILE, test_x, test_y, "robustfl server test")
        manifest["server"] = {"folder": SERVER, "train_images": int(plan.shared.size),
                              "per_class": per_class(labels[plan.shared]),
                              "test_images": int(test_y.size)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def summary(manifest: dict[str, Any], out: Path) -> str:
    """What was written, and how to use it."""
    rows = [f"{'folder':<10} {'images':>7}  per class 0..9"]
    for node in manifest["nodes"]:
        rows.append(f"{node['folder']:<10} {node['images']:>7}  "
                    + " ".join(str(c) for c in node["per_class"]))
    server = manifest["server"]
    rows.append(f"{SERVER:<10} {server['train_images']:>7}  "
                + " ".join(str(c) for c in server["per_class"])
                + f"  (+ {server['test_images']:,} test images)")
    return "\n".join([
        f"Wrote {len(manifest['nodes'])} node folders and the server's folder to {out} "
        f"({MANIFEST}):", *rows, "",
        "Start each SuperNode with its own name and folder (and nothing else of the data):",
        *[f"  --node-config \"{local_node_config(n['name'], str(out / n['folder']))}\""
          for n in manifest["nodes"]],
        f"and run with --run-config \"fl.client-data='local' data.dir='{out / SERVER}' ...\" "
        "(docs/deploy.md, \"Bring your own data\").",
    ])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.split", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True,
                        help="folder holding cifar-10-batches-py/ (the whole data set)")
    parser.add_argument("--out", required=True, type=Path,
                        help="new folder for the node folders, server/ and manifest.json")
    parser.add_argument("--clients", required=True, type=int, help="number of nodes")
    parser.add_argument("--partition", required=True, choices=SCHEMES,
                        help="how the nodes' images are drawn (as fl.partition)")
    parser.add_argument("--classes-per-client", type=int, default=2,
                        help="classes: k classes per node (default 2)")
    parser.add_argument("--dirichlet-alpha", type=float, default=0.5,
                        help="dirichlet: concentration (default 0.5)")
    parser.add_argument("--min-partition-size", type=int, default=10,
                        help="dirichlet: redraw until every node has this many (default 10)")
    parser.add_argument("--server-fraction", type=float, default=DEFAULT_SERVER_FRACTION,
                        help="class-balanced fraction of the training images kept for the "
                             f"server, for G and validation (default {DEFAULT_SERVER_FRACTION})")
    parser.add_argument("--train-limit", type=int, default=0,
                        help="use a class-balanced subset of this many training images "
                             "(default 0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    parser.add_argument("--format", choices=FORMATS, default="cifar",
                        help="node folders as CIFAR-10 batch files (default) or one .npz")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        manifest = split(args.data_dir, args.out, args.clients, args.partition,
                         seed=args.seed, server_fraction=args.server_fraction,
                         train_limit=args.train_limit,
                         classes_per_client=args.classes_per_client,
                         dirichlet_alpha=args.dirichlet_alpha,
                         min_partition_size=args.min_partition_size, fmt=args.format)
    except SplitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary(manifest, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
