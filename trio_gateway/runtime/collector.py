"""The garbage collector settings of a gateway process (`trio-gateway serve` and its workers).

Owns when CPython's cyclic collector runs a full collection; cli.py applies this before
`trio.run`. Must not be applied by `serve()` or `open_gateway()`: in an application that
embeds the gateway, the collector is the application's.

Why. A full (generation 2) collection walks every tracked object: with thousands of
connections open that is one pause of tens of milliseconds, and during a connect storm,
whose allocations trigger one every few hundred connections, those pauses took a large share
of the gateway's CPU and made the worst connect times (docs/PERFORMANCE.md, "Connecting").
Young collections (generations 0 and 1) stay as they are: they are what frees most garbage.
"""

from __future__ import annotations

import gc

# Generation-1 collections between two full ones (CPython: 10). Full collections also wait,
# as always, until the objects that survived since the last one reach a quarter of the rest.
FULL_COLLECTION_EVERY = 100


def tune_for_serving() -> None:
    """Make full collections rarer, and leave what exists at startup out of all of them."""
    # Modules, classes and the configuration live as long as the process: frozen, no
    # collection walks them again.
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
