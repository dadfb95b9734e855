"""Losses, gradient clipping, optimizers and schedulers: against finite differences
and, step for step, against PyTorch when it is installed."""
import numpy as np
import pytest

from fastlstm import optim
from fastlstm.nn import Parameter
from fastlstm.nn.functional import binary_cross_entropy_with_logits, cross_entropy
from fastlstm.nn.utils import clip_grad_norm_, clip_grad_value_
from conftest import numeric_grad, rel_err


@pytest.mark.parametrize("ignore_index", [None, 2])
def test_cross_entropy_gradient_and_stability(ignore_index):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 4, 5)) * 3
    targets = rng.integers(0, 5, (3, 4))
    loss, grad = cross_entropy(logits, targets, ignore_index=ignore_index)
    numeric = numeric_grad(lambda: cross_entropy(logits, targets, ignore_index)[0], logits)
    assert rel_err(grad, numeric) < 1e-6
    big, _ = cross_entropy(logits * 1e4, targets)      # no overflow, finite
    assert np.isfinite(big)
    all_ignored, g0 = cross_entropy(logits, np.full((3, 4), 7), ignore_index=7)
    assert all_ignored == 0.0 and not np.any(g0)


def test_binary_cross_entropy_gradient_and_stability():
    rng = np.random.default_rng(1)
    z = rng.standard_normal(7) * 4
    y = (rng.random(7) > 0.5).astype(float)
    loss, grad = binary_cross_entropy_with_logits(z, y)
    assert rel_err(grad, numeric_grad(lambda: binary_cross_entropy_with_logits(z, y)[0], z)) < 1e-6
    extreme, g = binary_cross_entropy_with_logits(np.array([800.0, -800.0]), np.array([0.0, 1.0]))
    assert np.isclose(extreme, 800.0) and np.all(np.isfinite(g))


def test_losses_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((6, 9))
    targets = rng.integers(0, 9, 6)
    targets[1] = -100
    lt = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(lt, torch.tensor(targets), ignore_index=-100)
    ref.backward()
    loss, grad = cross_entropy(logits, targets, ignore_index=-100)
    assert abs(loss - ref.item()) < 1e-12 and rel_err(grad, lt.grad.numpy()) < 1e-12
    z = rng.standard_normal(10)
    y = rng.random(10)
    zt = torch.tensor(z, requires_grad=True)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(zt, torch.tensor(y))
    ref.backward()
    loss, grad = binary_cross_entropy_with_logits(z, y)
    assert abs(loss - ref.item()) < 1e-12 and rel_err(grad, zt.grad.numpy()) < 1e-12


def _params_and_grads(seed=3):
    rng = np.random.default_rng(seed)
    shapes = [(4, 3), (5,)]
    init = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(20)]
    return init, grads


OPTIMIZERS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.1, momentum=0.9)),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("Adagrad", dict(lr=0.1, eps=1e-8)),
    ("Adam", dict(lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)),
    ("AdamW", dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)),
]


@pytest.mark.parametrize("name, kwargs", OPTIMIZERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTIMIZERS)])
def test_optimizers_match_torch_for_20_steps(name, kwargs):
    torch = pytest.importorskip("torch")
    init, grads = _params_and_grads()
    ours = [Parameter(a.copy()) for a in init]
    theirs = [torch.nn.Parameter(torch.tensor(a.copy())) for a in init]
    opt = getattr(optim, name)(ours, **kwargs)
    t_opt = getattr(torch.optim, name)(theirs, **kwargs)
    for step_grads in grads:
        for p, tp, g in zip(ours, theirs, step_grads):
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        opt.step()
        t_opt.step()
        for p, tp in zip(ours, theirs):
            assert rel_err(p.data, tp.detach().numpy()) < 1e-12


def test_optimizer_state_round_trip_continues_identically():
    init, grads = _params_and_grads(4)
    a = [Parameter(x.copy()) for x in init]
    opt_a = optim.Adam(a, lr=0.01)
    for g in grads[:10]:
        for p, gi in zip(a, g):
            p.grad[...] = gi
        opt_a.step()
    b = [Parameter(p.data.copy()) for p in a]
    opt_b = optim.Adam(b, lr=0.5)
    opt_b.load_state_dict(opt_a.state_dict())
    for g in grads[10:]:
        for p, q, gi in zip(a, b, g):
            p.grad[...] = gi
            q.grad[...] = gi
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.data, q.data)
    with pytest.raises(ValueError, match="parameters"):
        optim.Adam(b[:1]).load_state_dict(opt_a.state_dict())


def test_clipping_matches_torch():
    torch = pytest.importorskip("torch")
    init, grads = _params_and_grads(5)
    for max_norm in (0.5, 100.0):
        ours = [Parameter(x.copy()) for x in init]
        theirs = [torch.nn.Parameter(torch.tensor(x.copy())) for x in init]
        for p, tp, g in zip(ours, theirs, grads[0]):
            p.grad[...] = g * 3
            tp.grad = torch.tensor(g * 3)
        total = clip_grad_norm_(ours, max_norm)
        t_total = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
        assert abs(total - t_total.item()) < 1e-12
        for p, tp in zip(ours, theirs):
            assert rel_err(p.grad, tp.grad.numpy()) < 1e-12
    ours = [Parameter(x.copy()) for x in init]
    theirs = [torch.nn.Parameter(torch.tensor(x.copy())) for x in init]
    for p, tp, g in zip(ours, theirs, grads[1]):
        p.grad[...] = g
        tp.grad = torch.tensor(g)
    clip_grad_value_(ours, 0.3)
    torch.nn.utils.clip_grad_value_(theirs, 0.3)
    for p, tp in zip(ours, theirs):
        np.testing.assert_array_equal(p.grad, tp.grad.numpy())


def test_schedulers_match_torch():
    torch = pytest.importorskip("torch")
    p = Parameter(np.zeros(2))
    tp = torch.nn.Parameter(torch.zeros(2))
    opt, t_opt = optim.SGD([p], lr=1.0), torch.optim.SGD([tp], lr=1.0)
    sched, t_sched = optim.StepLR(opt, 3, gamma=0.5), torch.optim.lr_scheduler.StepLR(t_opt, 3, gamma=0.5)
    for _ in range(10):
        t_opt.step()
        assert abs(sched.step() - (t_sched.step() or t_opt.param_groups[0]["lr"])) < 1e-15
    opt, t_opt = optim.SGD([p], lr=1.0), torch.optim.SGD([tp], lr=1.0)
    plateau = optim.ReduceLROnPlateau(opt, factor=0.5, patience=2, cooldown=1)
    t_plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(t_opt, factor=0.5, patience=2,
                                                           cooldown=1)
    losses = [5, 4, 4, 4, 4, 3.9999, 3.5, 3.5, 3.5, 3.5, 3.5, 3.5, 1, 1, 1, 1]
    for loss in losses:
        t_plateau.step(loss)
        assert plateau.step(loss) == t_opt.param_groups[0]["lr"]


def test_bad_arguments():
    p = Parameter(np.zeros(3))
    with pytest.raises(ValueError, match="lr"):
        optim.SGD([p], lr=-1)
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])
    with pytest.raises(TypeError, match="Parameters"):
        optim.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="float"):
        Parameter(np.zeros(3, int))
    with pytest.raises(ValueError, match="targets"):
        cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
