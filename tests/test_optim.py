"""SGD and Adam: agreement with PyTorch, in-place updates, zero_grad, checkpoints, errors."""
import pickle
import tracemalloc

import numpy as np
import pytest

from minidl.layers.module import Parameter
from minidl.optim import SGD, Adam, Optimizer

SHAPES = [(4, 3), (5,), (2, 3, 2, 2)]
NUM_STEPS = 5

SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.1, momentum=0.8, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.02),
    dict(lr=0.1, momentum=0.5, dampening=0.5, weight_decay=0.1),
]
ADAM_CONFIGS = [
    dict(),
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01),
]


def make_params(rng, dtype):
    return [Parameter(rng.standard_normal(shape).astype(dtype)) for shape in SHAPES]


def make_grads(rng, dtype, steps=NUM_STEPS):
    return [[rng.standard_normal(shape).astype(dtype) for shape in SHAPES] for _ in range(steps)]


def run_steps(optimizer, params, grads):
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad[...] = g
        optimizer.step()


def compare_with_torch(rng, our_class, torch_class, config, dtype):
    torch = pytest.importorskip("torch")
    params = make_params(rng, dtype)
    torch_params = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    grads = make_grads(rng, dtype)
    ours = our_class(params, **config)
    theirs = torch_class(torch_params, foreach=False, **config)
    data_ids = [id(p.data) for p in params]
    rtol, atol = (1e-5, 1e-6) if dtype == np.float32 else (1e-12, 1e-14)
    for step, step_grads in enumerate(grads):
        for p, tp, g in zip(params, torch_params, step_grads):
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        ours.step()
        theirs.step()
        for i, (p, tp) in enumerate(zip(params, torch_params)):
            assert p.data.dtype == dtype
            np.testing.assert_allclose(
                p.data, tp.detach().numpy(), rtol=rtol, atol=atol,
                err_msg=f"{our_class.__name__}{config}: parameter {i} after step {step + 1}",
            )
    assert [id(p.data) for p in params] == data_ids
    return ours, theirs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=str)
def test_sgd_matches_torch(rng, config, dtype):
    torch = pytest.importorskip("torch")
    ours, theirs = compare_with_torch(rng, SGD, torch.optim.SGD, config, dtype)
    if config.get("momentum", 0) != 0:
        for i, tp in enumerate(theirs.param_groups[0]["params"]):
            np.testing.assert_allclose(
                ours.state[i]["momentum_buffer"], theirs.state[tp]["momentum_buffer"].numpy(),
                rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6 if dtype == np.float32 else 1e-14,
            )
    else:
        assert ours.state == {}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", ADAM_CONFIGS, ids=str)
def test_adam_matches_torch(rng, config, dtype):
    torch = pytest.importorskip("torch")
    ours, theirs = compare_with_torch(rng, Adam, torch.optim.Adam, config, dtype)
    for i, tp in enumerate(theirs.param_groups[0]["params"]):
        state = theirs.state[tp]
        assert ours.state[i]["step"] == int(state["step"]) == NUM_STEPS
        rtol, atol = (1e-5, 1e-7) if dtype == np.float32 else (1e-12, 1e-15)
        np.testing.assert_allclose(ours.state[i]["exp_avg"], state["exp_avg"].numpy(), rtol=rtol, atol=atol)
        np.testing.assert_allclose(ours.state[i]["exp_avg_sq"], state["exp_avg_sq"].numpy(), rtol=rtol, atol=atol)


def test_sgd_by_hand():
    p = Parameter(np.array([1.0, -2.0]))
    opt = SGD([p], lr=0.5, momentum=0.9, weight_decay=0.1)
    p.grad[...] = [1.0, 1.0]
    opt.step()  # d_p = g + 0.1 p = [1.1, 0.8]; buf = d_p; p -= 0.5 * buf
    np.testing.assert_allclose(p.data, [1.0 - 0.55, -2.0 - 0.4])
    buf = np.array([1.1, 0.8])
    d_p = np.array([1.0, 1.0]) + 0.1 * p.data
    buf = 0.9 * buf + d_p
    expected = p.data - 0.5 * buf
    opt.step()
    np.testing.assert_allclose(p.data, expected, rtol=1e-15)


def test_adam_first_step_is_lr_times_sign():
    # at t = 1 the bias-corrected m / sqrt(v) is g / |g|, so each entry moves by lr (eps = 0)
    p = Parameter(np.zeros(4))
    opt = Adam([p], lr=0.01, eps=0.0)
    p.grad[...] = [3.0, -0.5, 1e-3, -20.0]
    opt.step()
    np.testing.assert_allclose(p.data, [-0.01, 0.01, -0.01, 0.01], rtol=1e-12)


# ----------------------------------------------------------------- in place, dtypes, grads
@pytest.mark.parametrize("make_optimizer", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.1),
    lambda ps: Adam(ps, lr=0.1, weight_decay=0.1),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_updates_in_place_and_keep_dtype(rng, make_optimizer, dtype):
    params = make_params(rng, dtype)
    data = [p.data for p in params]
    before = [d.copy() for d in data]
    opt = make_optimizer(params)
    run_steps(opt, params, make_grads(rng, dtype, steps=3))
    for p, d, old in zip(params, data, before):
        assert p.data is d and p.data.dtype == dtype
        assert not np.array_equal(p.data, old)
    for entry in opt.state.values():
        for value in entry.values():
            if isinstance(value, np.ndarray):
                assert value.dtype == dtype


@pytest.mark.parametrize("make_optimizer", [
    lambda ps: SGD(ps, lr=0.1),
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1),
    lambda ps: Adam(ps, weight_decay=0.1),
])
def test_step_allocates_no_parameter_sized_arrays(rng, make_optimizer):
    size = 100_000
    params = [Parameter(rng.standard_normal(size).astype(np.float32)) for _ in range(2)]
    for p in params:
        p.grad[...] = rng.standard_normal(size)
    opt = make_optimizer(params)
    opt.step()  # the first step allocates the state and the scratch buffers
    tracemalloc.start()  # NumPy reports its array allocations to tracemalloc
    try:
        opt.step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size * 4 // 10, f"a step allocated {peak} bytes"


def test_float64_grad_on_float32_param(rng):
    p32 = Parameter(rng.standard_normal(6).astype(np.float32))
    p64 = Parameter(p32.data.astype(np.float64))
    grad = rng.standard_normal(6)
    p32.grad = grad.copy()  # float64 gradient on a float32 parameter
    p64.grad = grad.copy()
    opt32, opt64 = Adam([p32], lr=0.1), Adam([p64], lr=0.1)
    opt32.step()
    opt64.step()
    assert p32.data.dtype == np.float32 and opt32.state[0]["exp_avg"].dtype == np.float32
    np.testing.assert_allclose(p32.data, p64.data, rtol=1e-6)


def test_parameters_without_grad_are_skipped(rng):
    params = make_params(rng, np.float64)
    params[1].grad = None
    frozen = params[1].data.copy()
    for opt in (SGD(params, lr=0.1, momentum=0.9), Adam(params)):
        run_steps(opt, [params[0], params[2]], [[g[0], g[2]] for g in make_grads(rng, np.float64, 2)])
        np.testing.assert_array_equal(params[1].data, frozen)
        assert 1 not in opt.state
        opt.zero_grad()  # skips the missing grad too


def test_grad_shape_mismatch_raises(rng):
    p = Parameter(np.zeros((3, 2)))
    p.grad = np.zeros((1, 2))
    with pytest.raises(ValueError, match=r"SGD: parameter 0 .*\(3, 2\).*grad of shape \(1, 2\)"):
        SGD([p], lr=0.1).step()


def test_zero_grad(rng):
    params = make_params(rng, np.float32)
    grads = [p.grad for p in params]
    for p in params:
        p.grad[...] = 1.0
    SGD(params, lr=0.1).zero_grad()
    for p, g in zip(params, grads):
        assert p.grad is g and not np.any(p.grad)


def test_accepts_generator_and_lr_changes(rng):
    params = make_params(rng, np.float64)
    opt = SGD((p for p in params), lr=0.1)
    assert opt.params == params
    opt.lr = 0.0
    before = [p.data.copy() for p in params]
    run_steps(opt, params, make_grads(rng, np.float64, 1))
    for p, old in zip(params, before):
        np.testing.assert_array_equal(p.data, old)
    with pytest.raises(ValueError, match="SGD: expected lr >= 0"):
        opt.lr = -1.0
    assert opt.lr == 0.0


# ----------------------------------------------------------------- checkpoints
OPTIMIZER_FACTORIES = [
    (SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    (SGD, dict(lr=0.1, momentum=0.7, dampening=0.2)),
    (SGD, dict(lr=0.1)),
    (Adam, dict(lr=0.01, weight_decay=1e-2)),
]


@pytest.mark.parametrize("via", ["dict", "pickle", "npz-like"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, config", OPTIMIZER_FACTORIES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_state_dict_round_trip_is_bit_identical(rng, cls, config, dtype, via):
    params_a = make_params(rng, dtype)
    grads = make_grads(rng, dtype, steps=8)
    opt_a = cls(params_a, **config)
    run_steps(opt_a, params_a, grads[:3])

    saved = opt_a.state_dict()
    if via == "pickle":
        saved = pickle.loads(pickle.dumps(saved))
    elif via == "npz-like":  # string keys and 0-d arrays, as after flattening to a file
        saved = {
            "optimizer": np.array(saved["optimizer"]),
            "hyperparameters": {k: np.array(v) for k, v in saved["hyperparameters"].items()},
            "state": {str(i): {k: np.array(v) for k, v in entry.items()}
                      for i, entry in saved["state"].items()},
        }
    # a fresh optimizer with other hyperparameters over copies of the parameters
    params_b = [Parameter(p.data.copy()) for p in params_a]
    opt_b = cls(params_b, lr=123.0)
    opt_b.load_state_dict(saved)
    assert opt_b.hyperparameters() == opt_a.hyperparameters()
    assert all(type(v) in (float, bool, tuple) for v in opt_b.hyperparameters().values())

    run_steps(opt_a, params_a, grads[3:])
    run_steps(opt_b, params_b, grads[3:])
    for p_a, p_b in zip(params_a, params_b):
        assert np.array_equal(p_a.data, p_b.data)
    assert opt_a.state.keys() == opt_b.state.keys()
    for i in opt_a.state:
        for key, value in opt_a.state[i].items():
            assert np.array_equal(value, opt_b.state[i][key])


def test_state_dict_is_a_copy(rng):
    params = make_params(rng, np.float64)
    opt = Adam(params)
    run_steps(opt, params, make_grads(rng, np.float64, 2))
    saved = opt.state_dict()
    snapshot = saved["state"][0]["exp_avg"].copy()
    run_steps(opt, params, make_grads(rng, np.float64, 1))
    np.testing.assert_array_equal(saved["state"][0]["exp_avg"], snapshot)
    assert saved["state"][0]["step"] == 2 and opt.state[0]["step"] == 3
    assert set(saved) == {"optimizer", "hyperparameters", "state"}
    assert saved["hyperparameters"] == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


def test_loaded_state_is_not_aliased(rng):
    params = make_params(rng, np.float64)
    opt = SGD(params, lr=0.1, momentum=0.9)
    run_steps(opt, params, make_grads(rng, np.float64, 1))
    saved = opt.state_dict()
    opt.load_state_dict(saved)
    assert not np.shares_memory(opt.state[0]["momentum_buffer"], saved["state"][0]["momentum_buffer"])


def test_load_state_dict_errors(rng):
    params = make_params(rng, np.float64)
    adam = Adam(params)
    run_steps(adam, params, make_grads(rng, np.float64, 1))
    saved = adam.state_dict()
    sgd = SGD(params, lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="SGD.load_state_dict: expected the state of a SGD, got .* Adam"):
        sgd.load_state_dict(saved)

    fresh = Adam(make_params(rng, np.float64))
    bad_shape = Adam(params[:1] + [Parameter(np.zeros(7))] + params[2:])
    with pytest.raises(ValueError, match=r"parameter 1: expected 'exp_avg' of shape \(7,\), got \(5,\)"):
        bad_shape.load_state_dict(saved)
    assert bad_shape.state == {}  # nothing was modified

    too_few = Adam(params[:2])
    with pytest.raises(ValueError, match="state for parameter 2, but the optimizer has 2 parameters"):
        too_few.load_state_dict(saved)

    broken = adam.state_dict()
    del broken["state"][0]["exp_avg_sq"]
    with pytest.raises(KeyError, match=r"missing state \['exp_avg_sq'\]"):
        fresh.load_state_dict(broken)

    broken = adam.state_dict()
    broken["hyperparameters"]["amsgrad"] = False
    with pytest.raises(KeyError, match=r"unexpected hyperparameters \['amsgrad'\]"):
        fresh.load_state_dict(broken)

    broken = adam.state_dict()
    broken["hyperparameters"]["lr"] = -1.0
    with pytest.raises(ValueError, match="Adam: expected lr >= 0"):
        fresh.load_state_dict(broken)
    assert fresh.lr == 1e-3 and fresh.state == {}

    with pytest.raises(KeyError, match="missing entry 'state'"):
        fresh.load_state_dict({"optimizer": "Adam", "hyperparameters": {}})


# ----------------------------------------------------------------- hyperparameter errors
@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(lr=-0.1), ValueError, r"SGD: expected lr >= 0, got -0.1"),
    (dict(lr=float("nan")), ValueError, r"SGD: expected lr >= 0"),
    (dict(lr="0.1"), TypeError, r"SGD: expected lr to be a real number"),
    (dict(lr=0.1, momentum=-0.5), ValueError, r"SGD: expected momentum >= 0"),
    (dict(lr=0.1, weight_decay=-1e-4), ValueError, r"SGD: expected weight_decay >= 0"),
    (dict(lr=0.1, nesterov=True), ValueError, r"SGD: nesterov=True requires momentum > 0 and dampening == 0"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, r"SGD: nesterov=True requires"),
    (dict(lr=0.1, nesterov="yes"), TypeError, r"SGD: expected nesterov to be a bool"),
])
def test_sgd_hyperparameter_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        SGD([Parameter(np.zeros(2))], **kwargs)


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(lr=-1e-3), ValueError, r"Adam: expected lr >= 0"),
    (dict(eps=-1e-8), ValueError, r"Adam: expected eps >= 0"),
    (dict(weight_decay=-0.1), ValueError, r"Adam: expected weight_decay >= 0"),
    (dict(betas=(1.0, 0.999)), ValueError, r"Adam: expected betas\[0\] in \[0, 1\), got 1.0"),
    (dict(betas=(0.9, -0.1)), ValueError, r"Adam: expected betas\[1\] in \[0, 1\)"),
    (dict(betas=0.9), ValueError, r"Adam: expected betas to be a pair"),
    (dict(betas=(0.9, 0.99, 0.9)), ValueError, r"Adam: expected betas to be a pair"),
])
def test_adam_hyperparameter_errors(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        Adam([Parameter(np.zeros(2))], **kwargs)


def test_boundary_hyperparameters_are_accepted():
    p = [Parameter(np.zeros(2))]
    SGD(p, lr=0.0, momentum=0.0, weight_decay=0.0)
    Adam(p, lr=0.0, betas=(0.0, 0.0), eps=0.0)


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_params_errors(cls):
    name = cls.__name__
    with pytest.raises(ValueError, match=f"{name}: got an empty parameter list"):
        cls([], lr=0.1)
    with pytest.raises(ValueError, match=f"{name}: got an empty parameter list"):
        cls((p for p in []), lr=0.1)
    with pytest.raises(TypeError, match=f"{name}: expected every element of params to be a Parameter, got ndarray at index 1"):
        cls([Parameter(np.zeros(2)), np.zeros(2)], lr=0.1)
    with pytest.raises(TypeError, match=f"{name}: expected an iterable of Parameters.*single Parameter"):
        cls(Parameter(np.zeros(2)), lr=0.1)
    with pytest.raises(TypeError, match=f"{name}: expected an iterable of Parameters, got int"):
        cls(3, lr=0.1)
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match=f"{name}: the same Parameter appears twice"):
        cls([p, p], lr=0.1)


def test_base_class_is_abstract():
    with pytest.raises(NotImplementedError):
        Optimizer([Parameter(np.zeros(1))], {})


def test_repr():
    opt = SGD([Parameter(np.zeros(2))], lr=0.1, momentum=0.9)
    assert repr(opt) == "SGD(1 parameters, lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False)"
