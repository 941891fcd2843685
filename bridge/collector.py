"""Python's cyclic garbage collector in a serving worker: on a clock, not on allocations.

The collector starts a young collection when the tracked objects allocated since the last one
outnumber those freed by a threshold. A worker's own objects die with their request, so that
count grows only while requests pile up: when a broker pause or a burst holds more of them in
flight than usual. The collection then walks every one of those requests' objects and holds the
event loop while it does (3 to 14 ms for a young collection, 10 to 30 ms for the middle
generation, in a probe's traces of a worker at 7,100 events/s; none of them found garbage), so
each pause grew a longer one behind it (issue 11).

On a clock instead (``gc_interval_seconds``), the automatic collector is off once start-up is
done, and a supervised task collects the young generation every interval, the middle one every
tenth and everything every hundredth: a collection no longer waits for a backlog to start, and
garbage cycles (an error path's traceback, say) still go within one interval to a hundred.
"""

from __future__ import annotations

import asyncio
import gc

# Young objects collected once per this many allocations instead of 700, when the automatic
# collector runs (gc_interval_seconds 0): a request allocates a few hundred objects that die
# with it, and about 5 % of a worker's samples were in the GC.
GC_YOUNG_THRESHOLD = 10_000
# Of the clock's ticks, every this many collects the middle generation as well, and every
# OLD_EVERY all of them: the ratios of Python's own default thresholds (700, 10, 10).
MIDDLE_EVERY = 10
OLD_EVERY = 100


def settle_heap() -> None:
    """Moves what start-up built (modules, settings, the app) out of the collector's sight.

    ``gc.freeze()`` after a full collection: the older generations' collections then no longer
    walk the start-up heap, and a higher young threshold makes collections rarer; together
    about 9 % less CPU per event (issue 11).
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def generation_of(tick: int) -> int:
    """Which generation the clock's ``tick``-th collection (from 1) takes in."""
    if tick % OLD_EVERY == 0:
        return 2
    if tick % MIDDLE_EVERY == 0:
        return 1
    return 0


async def collect_on_a_clock(interval: float) -> None:
    """Switches the automatic collector off and collects every ``interval`` seconds instead,
    until cancelled (the service supervises it).

    The automatic collector comes back on when this task ends, for whatever still runs in the
    process (tests run the service in theirs).
    """
    tick = 0
    gc.disable()
    try:
        while True:
            await asyncio.sleep(interval)
            tick += 1
            gc.collect(generation_of(tick))
    finally:
        gc.enable()
