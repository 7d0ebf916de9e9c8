"""torch's intra-op thread count for one training run of a small model."""
from __future__ import annotations

import contextlib
from typing import Iterator

# Below this many weights, one thread trains fastest: each op is tiny, and more threads add
# start-up and spin-waiting (on a busy 2-core machine a 20-epoch head fit took 9 s with two
# threads and 0.3 s with one; the digits pretraining check 38 s and 7 s).
SMALL_MODEL = 1_000_000


@contextlib.contextmanager
def torch_threads(parameters: int, threads: int | None = None) -> Iterator[None]:
    """Use `threads` (default: 1 for a small model, torch's own choice otherwise), then restore."""
    import torch

    wanted = threads if threads is not None else (1 if parameters < SMALL_MODEL else None)
    before = torch.get_num_threads()
    if wanted:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)
