"""Several seeds of one experiment (`--seeds N` on run and sweep): which seeds, and the run
folder of each.

Seed i (i = 0 .. N-1) is the config's own `seed` plus i. The first one is the experiment as
it would run without --seeds, in the same folder; every further seed s is a run of its own
whose out.run-name, when one is set, gets the suffix "-seed<s>" (without a run name the
folder name already differs: it hashes the config, seed included). So a one-seed sweep from
before --seeds existed, and one run with --seeds 3 later, share their first seed's runs.
"""

from __future__ import annotations

from common.config import ExperimentConfig

from .overrides import UsageError

MAX_SEEDS = 100  # a bound against typos (--seeds 1000 is a thousand training runs)
MAX_SEED = 2**32 - 1  # the config's range of seed


def check_seeds(n: int) -> None:
    if not 1 <= n <= MAX_SEEDS:
        raise UsageError(f"--seeds must be between 1 and {MAX_SEEDS}, got {n}")


def seed_values(first: int, n: int) -> list[int]:
    """The seeds of an experiment whose config says seed = first."""
    check_seeds(n)
    if first + n - 1 > MAX_SEED:
        raise UsageError(f"--seeds {n} from seed {first} goes past the largest seed "
                         f"{MAX_SEED}; set a smaller seed")
    return [first + i for i in range(n)]


def seeded(cfg: ExperimentConfig, seed: int) -> ExperimentConfig:
    """The config of one seed of the experiment `cfg` (seed cfg.seed is the experiment
    itself)."""
    if seed == cfg.seed:
        return cfg
    changes: dict[str, object] = {"seed": seed}
    if cfg.out.run_name:
        changes["out.run-name"] = f"{cfg.out.run_name}-seed{seed}"
    return cfg.replace(**changes)
