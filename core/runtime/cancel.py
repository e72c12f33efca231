"""Cooperative cancellation: a token the worker checks once per batch, epoch or step."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class Cancelled(Exception):
    """Raised inside a job when its cancel token was set."""


class CancelToken:
    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled")


def check(cancel: CancelToken | None) -> None:
    """Raise :class:`Cancelled` if ``cancel`` is set; a ``None`` token never cancels."""
    if cancel is not None:
        cancel.raise_if_cancelled()


#: registering and removing the global module hooks of :func:`cancel_inside`, one thread at a time
_HOOKS = threading.Lock()


@contextlib.contextmanager
def cancel_inside(cancel: CancelToken | None) -> Iterator[None]:
    """Let ``cancel`` reach inside a single forward and backward pass of any torch model run by
    this thread, as diffusers' pipelines check ``interrupt`` at every step.

    While the context is open, every ``nn.Module`` call made by the calling thread checks the
    token first (a global forward pre-hook that looks at the thread), and so does every use of a
    tensor saved for backward (a saved-tensors unpack hook, thread-local by torch's design), so
    one long training step or scoring batch stops within one layer of Cancel instead of running
    to its end. :class:`Cancelled` is raised from inside the pass; the caller discards what the
    pass was computing, as it does for a cancel between batches. Other threads are not touched.
    """
    if cancel is None:
        yield
        return
    import torch
    from torch.nn.modules.module import register_module_forward_pre_hook

    owner = threading.get_ident()

    def before_module(_module, _inputs) -> None:
        if threading.get_ident() == owner:
            cancel.raise_if_cancelled()

    def unpack(t):
        cancel.raise_if_cancelled()
        return t

    with _HOOKS:  # torch numbers hooks with an unlocked counter: two threads could share an id
        handle = register_module_forward_pre_hook(before_module)
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, unpack):
            yield
    finally:
        with _HOOKS:
            handle.remove()
