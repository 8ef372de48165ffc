"""`gateway.runtime`: what `isthmus gateway` sets for its whole process."""

from __future__ import annotations

import gc

from gateway.runtime import YOUNG_THRESHOLD, tune_garbage_collector


def test_the_collectors_young_threshold_is_raised_and_the_older_ones_kept():
    before = gc.get_threshold()
    try:
        tune_garbage_collector()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
        assert YOUNG_THRESHOLD > before[0]
    finally:
        gc.set_threshold(*before)
