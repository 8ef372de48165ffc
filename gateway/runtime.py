"""Process-wide interpreter settings for a gateway process (set once by `isthmus gateway`).

Owns the cyclic garbage collector's first threshold. A proxied request's objects are freed by
reference counting (the request path keeps no reference cycles: `tests` check it), so the
collector finds nothing to free in them; but with many requests in flight its young-generation
count drifts upwards and, at CPython's default of 700, a collection ran every ~14 requests at 50
concurrent streams, promoting in-flight objects until a full collection of the whole heap (the
catalog, the routing tables: ~17 ms each) followed every few thousand requests. At 10,000 the
young collections are rare (16 instead of ~1,000 in 14,000 requests) and so are the full ones;
the young generation stays a few MB at most.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
