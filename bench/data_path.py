"""Data path: shuffling, indexing, crop/flip augmentation and concatenation of the parts,
as a fraction of the AT step they feed (measured interleaved with it)."""

from __future__ import annotations

from .at_measure import measure
from .fixtures import Options
from .result import Result
from .timing import median, paired_ratio

TARGET = 0.02


def run(opts: Options) -> Result:
    t = measure(opts)
    steps = t.steps_per_call
    fraction = paired_ratio(t.seconds["data"], t.seconds["train"])
    return Result(
        name="data_path", title="Data path share of the AT step", ratio=fraction,
        target=TARGET, direction="<",
        meaning=("(randperm + index + augment + concatenate of the three parts) / train() "
                 f"step, width {t.width}, batch {t.settings.batch_size}, uint8 images on the "
                 "training device"),
        details={"seconds": t.seconds},
        table=[{"what": "data path", "ms/step": 1000 * median(t.seconds["data"]) / steps},
               {"what": "train() step", "ms/step": 1000 * median(t.seconds["train"]) / steps}],
    )
