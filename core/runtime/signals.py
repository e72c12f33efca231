"""SIGINT / SIGTERM as a cancel request, for the command line.

:func:`cancel_on_signals` turns the first SIGINT (Ctrl+C) or SIGTERM into a cancelled
:class:`~core.runtime.cancel.CancelToken`, so a scan stops at the next image and its scored
rows can still be written; a second signal raises ``KeyboardInterrupt`` at once.
:func:`deferred_signals` protects a short step that must finish (writing the results): the
first signal only records itself, a second one abandons the step.

Signal handlers can only be installed from the main thread; elsewhere both do nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from core.runtime.cancel import CancelToken

_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


@contextmanager
def _handlers(handler: Callable[[int, object], None]) -> Iterator[bool]:
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    old = {s: signal.getsignal(s) for s in _SIGNALS}
    for s in _SIGNALS:
        signal.signal(s, handler)
    try:
        yield True
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def cancel_on_signals(token: CancelToken, on_signal: Callable[[str], None] | None = None) -> Iterator[CancelToken]:
    """While inside, SIGINT/SIGTERM cancel ``token`` (first time) or raise KeyboardInterrupt (second)."""

    def handler(signum: int, _frame: object) -> None:
        if token.cancelled:
            raise KeyboardInterrupt
        token.cancel()
        if on_signal:
            on_signal(signal.Signals(signum).name)

    with _handlers(handler):
        yield token


@contextmanager
def deferred_signals(on_signal: Callable[[str], None] | None = None) -> Iterator[list[str]]:
    """While inside, the first SIGINT/SIGTERM is recorded (in the yielded list) and the block
    goes on; a second one raises KeyboardInterrupt."""
    seen: list[str] = []

    def handler(signum: int, _frame: object) -> None:
        if seen:
            raise KeyboardInterrupt
        seen.append(signal.Signals(signum).name)
        if on_signal:
            on_signal(seen[0])

    with _handlers(handler):
        yield seen
