"""The model on the wire: a state dict packed into one flat vector per dtype.

Flower moves every array of a message as objects of their own, each an HTTP request through
the SuperLink and a few SQLite statements there; a ResNet-18 state dict has over a hundred
tensors. Packed, a model is two vectors (float32 weights and statistics, int64 BatchNorm
counters), and a round costs a fraction of the requests (measured in docs/performance.md,
"The model on the wire").

Only the vectors travel: server and clients build the same model from the run config, so both
know the layout (names, shapes, dtypes, order) without sending it. Element-wise aggregation
(FedAvg, median, trimmed mean) and Krum's distances give the same numbers on the packed
vectors as on the separate tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord


@dataclass(frozen=True)
class Layout:
    """Names, shapes and numpy dtype names of a state dict, in its order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor]) -> Layout:
        return cls(tuple(state), tuple(tuple(t.shape) for t in state.values()),
                   tuple(_numpy_dtype(t) for t in state.values()))

    def sizes(self) -> dict[str, int]:
        """Values per dtype group: the length of each packed vector."""
        sizes: dict[str, int] = {}
        for shape, dtype in zip(self.shapes, self.dtypes):
            sizes[dtype] = sizes.get(dtype, 0) + int(np.prod(shape, dtype=np.int64))
        return sizes

    def locate(self, dtype: str, index: int) -> str:
        """The name of the tensor that holds element `index` of the `dtype` vector."""
        offset = 0
        for name, shape, group in zip(self.names, self.shapes, self.dtypes):
            if group != dtype:
                continue
            offset += int(np.prod(shape, dtype=np.int64))
            if index < offset:
                return name
        raise IndexError(f"element {index} lies beyond the {dtype} vector ({offset} values)")


def _numpy_dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def pack(state: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """{dtype name: 1-D vector of every tensor of that dtype, flattened, in state order}."""
    groups: dict[str, list[np.ndarray]] = {}
    for t in state.values():
        groups.setdefault(_numpy_dtype(t), []).append(t.detach().cpu().reshape(-1).numpy())
    return {dtype: np.concatenate(parts) for dtype, parts in groups.items()}


def unpack(packed: Mapping[str, np.ndarray], layout: Layout) -> dict[str, torch.Tensor]:
    """The state dict back, checked against the layout first (a peer running another
    RobustFL version or model config would otherwise load garbage)."""
    got = {k: int(np.asarray(v).size) for k, v in packed.items()}
    if got != layout.sizes():
        raise ValueError(f"packed model has {got} values per dtype, this model needs "
                         f"{layout.sizes()}: run the same RobustFL version and model.* "
                         "settings on the server and every client")
    offsets = dict.fromkeys(packed, 0)
    state = {}
    for name, shape, dtype in zip(layout.names, layout.shapes, layout.dtypes):
        vector = np.asarray(packed[dtype])
        if vector.dtype.name != dtype:
            raise ValueError(f"packed {dtype} vector arrived as {vector.dtype.name}")
        n = int(np.prod(shape, dtype=np.int64))
        part = vector[offsets[dtype]:offsets[dtype] + n]
        state[name] = torch.from_numpy(part.reshape(shape).copy())
        offsets[dtype] += n
    return state


def packed_record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """A state dict as the ArrayRecord that travels (server, client and benchmarks alike):
    one Array per dtype."""
    return ArrayRecord({dtype: Array(v) for dtype, v in pack(state).items()})


def unpacked_state(record: ArrayRecord, layout: Layout) -> dict[str, torch.Tensor]:
    """The state dict back from a packed ArrayRecord, checked against `layout` (unpack)."""
    return unpack({dtype: a.numpy() for dtype, a in record.items()}, layout)
