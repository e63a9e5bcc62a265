"""Stop a training at a step boundary when asked (Ctrl-C, or SIGTERM from a scheduler).

Inside `deferred()` the first SIGINT or SIGTERM only sets a flag; the trainer checks it between
steps (`requested`), saves a checkpoint of exactly that position and raises KeyboardInterrupt,
so no work is lost and the run resumes bit for bit. A second signal interrupts at once. Outside
the block, both signals interrupt at once (the CLI turns SIGTERM into KeyboardInterrupt).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested = threading.Event()


def _defer(signum: int, frame: object) -> None:
    if _requested.is_set():
        raise KeyboardInterrupt
    _requested.set()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block, a stop request waits for the next step boundary."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are delivered to the main thread only: nothing to defer here
        return
    _requested.clear()
    previous = {sig: signal.signal(sig, _defer) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested.clear()


def requested() -> bool:
    return _requested.is_set()
