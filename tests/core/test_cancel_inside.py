"""Cancel reaches inside one forward and one backward pass (core.runtime.cancel.cancel_inside)."""

import threading

import numpy as np
import pytest
import torch
from torch import nn

from core.data.images import ImageSource
from core.detectors.registry import create_detector
from core.runtime.cancel import Cancelled, CancelToken, cancel_inside
from tests.core.test_detectors import TINY, images


def _note(ran, i, token, at):
    ran.append(i)
    if i == at:
        token.cancel()


def _net(n=6):
    return nn.Sequential(*[nn.Linear(4, 4) for _ in range(n)])


def test_a_forward_pass_stops_at_the_next_layer():
    net, token, ran = _net(), CancelToken(), []
    for i, layer in enumerate(net):
        layer.register_forward_hook(lambda m, a, out, i=i: _note(ran, i, token, 2))
    with cancel_inside(token), pytest.raises(Cancelled):
        net(torch.ones(1, 4))
    assert ran == [0, 1, 2]  # layer 3 never ran
    net(torch.ones(1, 4))  # the hooks are gone with the context
    assert ran[-1] == 5


def test_a_backward_pass_stops_inside():
    net, token = _net(), CancelToken()
    x = torch.ones(2, 4, requires_grad=True)
    with cancel_inside(token):
        loss = net(x).square().sum()
        grads = []
        for layer in net:
            layer.weight.register_hook(lambda g: _note(grads, 1, token, 1))
        with pytest.raises(Cancelled):
            loss.backward()
    assert len(grads) < len(net)  # stopped before the first layers got their gradients


def test_other_threads_and_no_token_are_not_touched():
    net, token = _net(), CancelToken()
    token.cancel()
    out = {}
    with cancel_inside(token):
        t = threading.Thread(target=lambda: out.setdefault("y", net(torch.ones(1, 4))))
        t.start()
        t.join()
    assert out["y"].shape == (1, 4)
    with cancel_inside(None):
        net(torch.ones(1, 4))


@pytest.mark.parametrize("name", ["vqvae", "score-resilience", "differnet", "sanf"])
def test_cancel_inside_the_first_training_step(name):
    """Cancel pressed while the first training step's forward pass runs (the first call of a
    module with trainable weights under autograd; frozen backbones run without it) stops the fit
    there: no step completes, no training progress is reported, no model is left behind."""
    det = create_detector(name, TINY[name], device="cpu")
    token, steps = CancelToken(), []

    def press_cancel(module, _inputs):
        if torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters(recurse=False)):
            token.cancel()

    hook = torch.nn.modules.module.register_module_forward_pre_hook(press_cancel)
    try:
        with pytest.raises(Cancelled):
            det.fit(ImageSource(images(8)), cancel=token,
                    progress=lambda d, t, m="": steps.append(m) if "epoch" in m else None)
    finally:
        hook.remove()
    assert token.cancelled and steps == [] and not det.fitted


def test_scoring_batch_stops_inside():
    det = create_detector("vqvae", TINY["vqvae"], device="cpu")
    det.fit(ImageSource(images(8)))
    token, reported = CancelToken(), []
    h = det.model.decoder.register_forward_pre_hook(lambda m, i: token.cancel())
    with pytest.raises(Cancelled):
        det.score(ImageSource(images(3)), cancel=token, on_result=lambda i, r: reported.append(i))
    h.remove()
    assert reported == []
    assert np.isfinite(det.score(ImageSource(images(1)))[0].score)
