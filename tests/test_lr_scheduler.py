"""Learning-rate schedulers: the sequences of PyTorch's, checkpoints, errors."""
import math
import pickle
import warnings

import numpy as np
import pytest

from minidl import optim
from minidl.layers.module import Parameter
from minidl.optim import lr_scheduler as sched

from helpers import import_torch

torch = import_torch()
T = torch.optim.lr_scheduler

# (name, minidl factory, torch factory, steps); each factory takes (scheduler module, optimizer)
CASES = [
    ("step", lambda S, o: S.StepLR(o, step_size=7, gamma=0.5), 60),
    ("step-1", lambda S, o: S.StepLR(o, step_size=1, gamma=0.9), 50),
    ("multistep", lambda S, o: S.MultiStepLR(o, milestones=[10, 30, 30, 70], gamma=0.3), 100),
    ("multistep-unsorted", lambda S, o: S.MultiStepLR(o, milestones=[50, 5], gamma=0.1), 80),
    ("exponential", lambda S, o: S.ExponentialLR(o, gamma=0.97), 100),
    ("cosine", lambda S, o: S.CosineAnnealingLR(o, T_max=30, eta_min=1e-3), 200),
    ("cosine-no-min", lambda S, o: S.CosineAnnealingLR(o, T_max=100), 100),
    ("linear-warmup", lambda S, o: S.LinearLR(o, start_factor=0.1, total_iters=20), 60),
    ("linear-decay", lambda S, o: S.LinearLR(o, start_factor=1.0, end_factor=0.05, total_iters=40), 50),
    ("lambda", lambda S, o: S.LambdaLR(o, lambda epoch: 1 / (1 + 0.1 * epoch)), 80),
    ("lambda-per-group", lambda S, o: S.LambdaLR(o, [lambda e: 0.9**e, lambda e: 1 + e % 3]), 50),
    ("onecycle-cos", lambda S, o: S.OneCycleLR(o, max_lr=1.0, total_steps=100), 100),
    ("onecycle-per-group", lambda S, o: S.OneCycleLR(o, max_lr=[1.0, 0.5], epochs=5, steps_per_epoch=30,
                                                     pct_start=0.25, div_factor=10.0), 150),
    ("onecycle-linear", lambda S, o: S.OneCycleLR(o, max_lr=0.3, total_steps=120, anneal_strategy="linear"), 120),
    ("onecycle-three-phase", lambda S, o: S.OneCycleLR(o, max_lr=0.5, total_steps=90, three_phase=True,
                                                       final_div_factor=100.0), 90),
    ("onecycle-no-momentum", lambda S, o: S.OneCycleLR(o, max_lr=0.2, total_steps=60, cycle_momentum=False,
                                                       anneal_strategy="linear", three_phase=True), 60),
    ("warmup-then-cosine", lambda S, o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.1, total_iters=10), S.CosineAnnealingLR(o, T_max=90)],
        milestones=[10]), 150),
    ("warmup-step-exponential", lambda S, o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.5, total_iters=4), S.StepLR(o, step_size=10, gamma=0.5),
            S.ExponentialLR(o, gamma=0.95)], milestones=[5, 40]), 100),
]
OPTIMIZERS = {
    "sgd": (lambda groups: optim.SGD(groups, lr=0.1, momentum=0.9),
            lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9)),
    "sgd-no-momentum": (lambda groups: optim.SGD(groups, lr=0.1),
                        lambda groups: torch.optim.SGD(groups, lr=0.1)),
    "adam": (lambda groups: optim.Adam(groups, lr=0.01, betas=(0.9, 0.99)),
             lambda groups: torch.optim.Adam(groups, lr=0.01, betas=(0.9, 0.99))),
}


def _momentum(group):
    return group["betas"][0] if "betas" in group else group["momentum"]


def _pair(kind, make):
    """A minidl and a torch optimizer with two groups (lr 0.1/0.01 or the optimizer's default)."""
    ours_opt, theirs_opt = OPTIMIZERS[kind]
    params = [Parameter(np.zeros(3)), Parameter(np.zeros(2))]
    tensors = [torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)]
    ours = ours_opt([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.01}])
    theirs = theirs_opt([{"params": [tensors[0]]}, {"params": [tensors[1]], "lr": 0.01}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns when its scheduler steps before the optimizer
        return ours, theirs, make(sched, ours), make(T, theirs)


def _record(optimizer, scheduler, steps):
    """The (lr, momentum) of every group before each of ``steps`` optimizer steps."""
    lrs, momenta = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            lrs.append(list(scheduler.get_last_lr()))
            momenta.append([_momentum(g) for g in optimizer.param_groups])
            scheduler.step()
    return np.array(lrs), np.array(momenta)


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize("name, make, steps", CASES, ids=[c[0] for c in CASES])
def test_sequence_of_learning_rates_matches_torch(name, make, steps, kind):
    ours, theirs, our_sched, their_sched = _pair(kind, make)
    our_lrs, our_momenta = _record(ours, our_sched, steps)
    their_lrs, their_momenta = _record(theirs, their_sched, steps)
    np.testing.assert_allclose(our_lrs, their_lrs, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(our_momenta, their_momenta, rtol=1e-12, atol=1e-15)
    # the groups hold the same values as the scheduler reports
    assert [g["lr"] for g in ours.param_groups] == our_sched.get_last_lr()
    assert all(type(g["lr"]) is float for g in ours.param_groups)
    assert our_sched.last_epoch == their_sched.last_epoch == steps


def test_onecycle_cycles_momentum_inversely(rng):
    p = Parameter(np.zeros(2))
    opt = optim.SGD([p], lr=0.1)  # momentum 0 at construction: OneCycleLR turns it on
    s = sched.OneCycleLR(opt, max_lr=1.0, total_steps=10, pct_start=0.5, anneal_strategy="linear")
    lrs, momenta = _record(opt, s, 10)
    assert lrs[0, 0] == pytest.approx(1.0 / 25) and momenta[0, 0] == pytest.approx(0.95)
    assert lrs[4, 0] == pytest.approx(1.0) and momenta[4, 0] == pytest.approx(0.85)
    assert lrs[9, 0] == pytest.approx(1.0 / 25 / 1e4)
    assert np.all(np.diff(lrs[:5, 0]) > 0) and np.all(np.diff(momenta[:5, 0]) < 0)
    assert opt.param_groups[0]["max_lr"] == 1.0 and opt.param_groups[0]["base_momentum"] == 0.85


def test_steps_use_the_scheduled_lr(rng):
    """The optimizer's update uses the lr the scheduler set (what a training loop relies on)."""
    p = Parameter(np.zeros(1))
    opt = optim.SGD([p], lr=1.0)
    s = sched.MultiStepLR(opt, milestones=[2], gamma=0.1)
    for _ in range(4):
        p.grad[...] = 1.0
        opt.step()
        s.step()
    np.testing.assert_allclose(p.data, -(1.0 + 1.0 + 0.1 + 0.1))


# ----------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("name, make, steps", CASES, ids=[c[0] for c in CASES])
def test_state_dict_round_trip_mid_schedule_continues_identically(name, make, steps, kind):
    ours_opt, _ = OPTIMIZERS[kind]

    def build():
        params = [Parameter(np.zeros(3)), Parameter(np.zeros(2))]
        opt = ours_opt([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.01}])
        return opt, make(sched, opt)

    opt, scheduler = build()
    middle = steps // 2 + 1
    _record(opt, scheduler, middle)
    saved_opt = pickle.loads(pickle.dumps(opt.state_dict()))
    saved_sched = pickle.loads(pickle.dumps(scheduler.state_dict()))
    expected_lrs, expected_momenta = _record(opt, scheduler, steps - middle)

    resumed_opt, resumed = build()  # as a new process would: build, then load both states
    resumed_opt.load_state_dict(saved_opt)
    resumed.load_state_dict(saved_sched)
    assert resumed.last_epoch == middle
    lrs, momenta = _record(resumed_opt, resumed, steps - middle)
    np.testing.assert_array_equal(lrs, expected_lrs)
    np.testing.assert_array_equal(momenta, expected_momenta)


def test_state_dict_contents_and_that_it_is_a_copy():
    opt = optim.SGD([Parameter(np.zeros(2))], lr=0.1)
    s = sched.StepLR(opt, step_size=2, gamma=0.5)
    s.step()
    state = s.state_dict()
    assert state == {"last_epoch": 1, "base_lrs": [0.1], "_last_lr": [0.1], "_step_count": 2,
                     "step_size": 2, "gamma": 0.5}
    state["base_lrs"][0] = 7.0
    assert s.base_lrs == [0.1]
    nested = sched.SequentialLR(opt, [sched.ExponentialLR(opt, 0.9), sched.StepLR(opt, 3)], [2])
    assert set(nested.state_dict()) == {"last_epoch", "_milestones", "_last_lr", "_schedulers"}
    assert nested.state_dict()["_schedulers"][0]["gamma"] == 0.9


def test_resume_with_last_epoch_needs_initial_lr():
    opt = optim.SGD([Parameter(np.zeros(2))], lr=0.1)
    with pytest.raises(KeyError, match=r"StepLR: resuming with last_epoch=4 needs param_groups\[0\]\['initial_lr'\]"):
        sched.StepLR(opt, step_size=2, last_epoch=4)
    opt.param_groups[0]["initial_lr"] = 0.1
    s = sched.StepLR(opt, step_size=2, gamma=0.5, last_epoch=4)  # as PyTorch: no change at resume
    assert s.last_epoch == 5 and s.get_last_lr() == [0.1]


def test_load_state_dict_errors_change_nothing():
    opt = optim.SGD([Parameter(np.zeros(2))], lr=0.1)
    s = sched.CosineAnnealingLR(opt, T_max=10)
    s.step()
    good = s.state_dict()
    cases = [
        (dict(good, T_max=0), ValueError, r"CosineAnnealingLR: expected T_max to be an integer >= 1, got 0"),
        (dict(good, last_epoch=-5), ValueError, r"CosineAnnealingLR.load_state_dict: expected last_epoch to be an integer >= -1, got -5"),
        (dict(good, last_epoch="3"), ValueError, r"expected last_epoch to be an integer >= -1, got '3'"),
        (dict(good, base_lrs=[0.1, 0.2]), ValueError, r"expected 'base_lrs' to hold 1 values \(one per parameter group\), got 2"),
        (dict(good, base_lrs=[float("nan")]), ValueError, r"expected base_lrs\[0\] to be a finite number"),
        ({k: v for k, v in good.items() if k != "eta_min"}, KeyError, r"missing entries \['eta_min'\]"),
        (dict(good, gamma=0.1), KeyError, r"unexpected entries \['gamma'\]"),
    ]
    for state, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            s.load_state_dict(state)
        assert s.state_dict() == good
    with pytest.raises(TypeError, match=r"CosineAnnealingLR.load_state_dict: expected a dict, got list"):
        s.load_state_dict([])


# ----------------------------------------------------------------- errors
def _sgd():
    return optim.SGD([Parameter(np.zeros(2))], lr=0.1)


@pytest.mark.parametrize("make, error, pattern", [
    (lambda o: sched.StepLR(o, step_size=0), ValueError, r"StepLR: expected step_size to be an integer >= 1, got 0"),
    (lambda o: sched.StepLR(o, step_size=2.5), ValueError, r"StepLR: expected step_size to be an integer >= 1, got 2.5"),
    (lambda o: sched.StepLR(o, step_size=2, gamma="half"), TypeError, r"StepLR: expected gamma to be a real number, got 'half'"),
    (lambda o: sched.StepLR(o, step_size=2, gamma=float("nan")), ValueError, r"StepLR: expected gamma to be a finite number"),
    (lambda o: sched.StepLR("opt", step_size=2), TypeError, r"StepLR: expected a minidl optimizer \(e.g. optim.SGD\), got str"),
    (lambda o: sched.MultiStepLR(o, milestones=5), TypeError, r"MultiStepLR: expected milestones to be a list of epochs, got 5"),
    (lambda o: sched.MultiStepLR(o, milestones=[3, -1]), ValueError, r"MultiStepLR: expected milestones\[1\] to be an integer >= 0, got -1"),
    (lambda o: sched.ExponentialLR(o, gamma=-0.5), ValueError, r"ExponentialLR: expected gamma >= 0, got -0.5"),
    (lambda o: sched.CosineAnnealingLR(o, T_max=10, eta_min=-1), ValueError, r"CosineAnnealingLR: expected eta_min >= 0"),
    (lambda o: sched.LinearLR(o, start_factor=0), ValueError, r"LinearLR: expected start_factor in \(0, 1\], got 0"),
    (lambda o: sched.LinearLR(o, end_factor=1.5), ValueError, r"LinearLR: expected end_factor in \[0, 1\], got 1.5"),
    (lambda o: sched.LinearLR(o, total_iters=0), ValueError, r"LinearLR: expected total_iters to be an integer >= 1"),
    (lambda o: sched.LambdaLR(o, lr_lambda=0.5), TypeError, r"LambdaLR: expected lr_lambda to be callable, got float"),
    (lambda o: sched.LambdaLR(o, lr_lambda=[abs, abs]), ValueError, r"LambdaLR: expected 1 lr_lambdas \(one per parameter group\), got 2"),
    (lambda o: sched.LambdaLR(o, lambda e: float("nan")), ValueError, r"LambdaLR: expected the learning rate of param_groups\[0\] at epoch 0 to be a finite number, got nan"),
    (lambda o: sched.StepLR(o, step_size=2, last_epoch=-2), ValueError, r"StepLR: expected last_epoch to be an integer >= -1, got -2"),
    (lambda o: sched.OneCycleLR(o, max_lr=1.0), ValueError, r"OneCycleLR: give total_steps, or epochs and steps_per_epoch"),
    (lambda o: sched.OneCycleLR(o, max_lr=1.0, total_steps=0), ValueError, r"OneCycleLR: expected total_steps to be an integer >= 1, got 0"),
    (lambda o: sched.OneCycleLR(o, max_lr=1.0, total_steps=10, pct_start=1.5), ValueError, r"OneCycleLR: expected pct_start in \[0, 1\], got 1.5"),
    (lambda o: sched.OneCycleLR(o, max_lr=1.0, total_steps=10, anneal_strategy="exp"), ValueError, r"OneCycleLR: expected anneal_strategy 'cos' or 'linear', got 'exp'"),
    (lambda o: sched.OneCycleLR(o, max_lr=[1.0, 2.0], total_steps=10), ValueError, r"OneCycleLR: expected max_lr to be a number or a list of 1 numbers \(one per parameter group\), got 2 values"),
    (lambda o: sched.OneCycleLR(o, max_lr=1.0, total_steps=10, div_factor=0), ValueError, r"OneCycleLR: expected div_factor and final_div_factor > 0"),
    (lambda o: sched.OneCycleLR(o, max_lr=1.0, total_steps=10, pct_start=0.1), ValueError, r"OneCycleLR: phase 1 has no steps \(pct_start=0.1, total_steps=10\)"),
    (lambda o: sched.SequentialLR(o, [], []), ValueError, r"SequentialLR: expected at least one scheduler, got none"),
    (lambda o: sched.SequentialLR(o, [sched.StepLR(o, 2), sched.StepLR(o, 3)], []), ValueError, r"SequentialLR: expected 1 milestones for 2 schedulers, got 0"),
    (lambda o: sched.SequentialLR(o, [sched.StepLR(o, 2), sched.StepLR(o, 3), sched.StepLR(o, 4)], [5, 5]), ValueError, r"SequentialLR: expected increasing milestones, got \[5, 5\]"),
    (lambda o: sched.SequentialLR(o, [sched.StepLR(o, 2), "cosine"], [5]), TypeError, r"SequentialLR: schedulers\[1\] is a str, not an LRScheduler"),
    (lambda o: sched.SequentialLR(o, [sched.StepLR(o, 2), sched.StepLR(_sgd(), 2)], [5]), ValueError, r"SequentialLR: schedulers\[1\] \(StepLR\) belongs to another optimizer"),
])
def test_bad_settings_give_clear_errors(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make(_sgd())


def test_onecycle_cycle_momentum_needs_momentum():
    class Plain(optim.Optimizer):
        HYPERPARAMETERS = ("lr",)

        def __init__(self, params, lr):
            super().__init__(params, dict(lr=lr))

        def _check_hyperparameters(self, where, lr):
            return {"lr": float(lr)}

    with pytest.raises(ValueError, match="OneCycleLR: cycle_momentum needs an optimizer with momentum or betas, got Plain"):
        sched.OneCycleLR(Plain([Parameter(np.zeros(1))], lr=0.1), max_lr=1.0, total_steps=10)


def test_onecycle_refuses_to_step_past_total_steps():
    opt = _sgd()
    s = sched.OneCycleLR(opt, max_lr=1.0, total_steps=5)
    for _ in range(4):
        s.step()
    assert s.get_last_lr()[0] == pytest.approx(1.0 / 25 / 1e4, rel=1e-12)  # the last step's lr
    s.step()  # computes a value for step 5, which a loop of 5 batches never uses (as PyTorch)
    with pytest.raises(ValueError, match="OneCycleLR: stepped 6 times, but total_steps is 5"):
        s.step()


def test_negative_lr_from_a_schedule_is_caught_by_the_optimizer():
    opt = _sgd()
    s = sched.LambdaLR(opt, lambda epoch: 1.0 - epoch)
    s.step()
    s.step()  # lr = 0.1 * (1 - 2) < 0
    assert s.get_last_lr() == [pytest.approx(-0.1)]
    with pytest.raises(ValueError, match=r"SGD param_groups\[0\]: expected lr >= 0, got -0.1"):
        opt.step()


def test_cosine_closed_form():
    opt = _sgd()
    s = sched.CosineAnnealingLR(opt, T_max=20, eta_min=0.01)
    for epoch in range(1, 41):
        s.step()
        expected = 0.01 + (0.1 - 0.01) * (1 + math.cos(math.pi * epoch / 20)) / 2
        assert s.get_last_lr()[0] == pytest.approx(expected, rel=1e-12)
