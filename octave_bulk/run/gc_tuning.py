"""The cyclic garbage collector, tuned for the length of one run (docs/performance.md, section
"Per-contact CPU")."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["gc_tuned_for_run"]

_GC_YOUNG_THRESHOLD = 10_000  # allocations between young collections during a run (default 700)


@contextlib.contextmanager
def gc_tuned_for_run() -> Iterator[None]:
    """The cyclic GC, tuned for the run and restored after it (docs/performance.md, section
    "Per-contact CPU"; ~300 ms of a 20k-contact run at instant latency before):

    * what exists before the first request (modules, models: ~60k objects) is frozen out of
      full collections, which traversed it all (~35 ms, five times in 20k contacts); unfrozen
      at the end, so nothing alive now escapes collection for good;
    * young collections wait for 10,000 net allocations instead of 700: nearly everything a
      call allocates is freed by reference counting long before, so they all but stop
      (~150 ms of 20k contacts) while cyclic garbage still bounds itself."""
    thresholds = gc.get_threshold()
    gc.freeze()
    if 0 < thresholds[0] < _GC_YOUNG_THRESHOLD:  # 0: automatic collection is off; keep it
        gc.set_threshold(_GC_YOUNG_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
