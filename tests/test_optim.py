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


def compare_with_torch(rng, our_class, torch_class, config, dtype, torch):
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
def test_sgd_matches_torch(rng, config, dtype, torch):
    ours, theirs = compare_with_torch(rng, SGD, torch.optim.SGD, config, dtype, torch)
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
def test_adam_matches_torch(rng, config, dtype, torch):
    ours, theirs = compare_with_torch(rng, Adam, torch.optim.Adam, config, dtype, torch)
    for i, tp in enumerate(theirs.param_groups[0]["params"]):
        state = theirs.state[tp]
        assert ours.state[i]["step"] == int(state["step"]) == NUM_STEPS
        rtol, atol = (1e-5, 1e-7) if dtype == np.float32 else (1e-12, 1e-15)
        np.testing.assert_allclose(ours.state[i]["exp_avg"], state["exp_avg"].numpy(), rtol=rtol, atol=atol)
        np.testing.assert_allclose(ours.state[i]["exp_avg_sq"], state["exp_avg_sq"].numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", SGD_CONFIGS, ids=str)
def test_sgd_fused_kernel_matches_the_numpy_update(rng, config, dtype):
    """The fused kernel (minidl/_kernels/_optim.pyx, compiled backend) against the readable
    NumPy update (SGD._update, run under the reference backend): the same bits after several
    steps, for parameters smaller and larger than a kernel task (16,384 elements, so two
    threads share the large one), momentum buffers included. Where the CPU runs the AVX-512
    clone the compiler may fuse a multiply and an add, so there only to rounding."""
    import minidl
    from minidl._kernels import _optim
    shapes = [(3, 5), (300, 200)]
    params = [Parameter(rng.standard_normal(shape).astype(dtype)) for shape in shapes]
    twins = [Parameter(p.data.copy()) for p in params]
    fused, numpy_version = SGD(params, **config), SGD(twins, **config)
    for _ in range(NUM_STEPS):
        for p, q in zip(params, twins):
            p.grad = rng.standard_normal(p.data.shape).astype(dtype)
            q.grad = p.grad.copy()
        fused.step()
        with minidl.backend("reference"):
            numpy_version.step()
    exact = _optim.BUILD["cpu_isa"] != "avx512f"
    pairs = [(p.data, q.data) for p, q in zip(params, twins)]
    pairs += [(fused.state[i]["momentum_buffer"], numpy_version.state[i]["momentum_buffer"])
              for i in fused.state if "momentum_buffer" in fused.state[i]]
    assert len(pairs) == (4 if config.get("momentum") else 2)
    for a, b in pairs:
        assert a.dtype == dtype
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == np.float32 else 1e-13)


def test_sgd_arrays_the_kernel_does_not_take_use_the_numpy_update(rng):
    """A Fortran-ordered parameter, a gradient of another dtype, a gradient that is the data
    itself and a non-contiguous momentum buffer loaded into the state all still follow
    PyTorch's rule (compared with the NumPy update on plain copies)."""
    import minidl
    data = rng.standard_normal((6, 4)).astype(np.float32)
    grad = rng.standard_normal((6, 4)).astype(np.float32)
    expected = Parameter(data.copy())
    reference = SGD([expected], lr=0.1, momentum=0.9)
    for _ in range(2):
        expected.grad = grad.copy()
        with minidl.backend("reference"):
            reference.step()
    fortran = Parameter(np.asfortranarray(data))
    other_dtype = Parameter(data.copy())
    strided_buffer = Parameter(data.copy())
    optimizers = [SGD([p], lr=0.1, momentum=0.9) for p in (fortran, other_dtype,
                                                           strided_buffer)]
    for step in range(2):
        fortran.grad = np.asfortranarray(grad)
        other_dtype.grad = grad.astype(np.float64)
        strided_buffer.grad = grad.copy()
        if step == 1:  # replace the buffer by a strided view with the same values
            buf = optimizers[2].state[0]["momentum_buffer"]
            wide = np.zeros((6, 8), np.float32)
            wide[:, ::2] = buf
            optimizers[2].state[0]["momentum_buffer"] = wide[:, ::2]
        for optimizer in optimizers:
            optimizer.step()
    for p in (fortran, other_dtype, strided_buffer):
        np.testing.assert_allclose(p.data, expected.data, rtol=1e-6, atol=1e-7)
    same = Parameter(data.copy())
    same.grad = same.data  # the gradient is the data: p - lr * p
    SGD([same], lr=0.25).step()
    np.testing.assert_array_equal(same.data, data - np.float32(0.25) * data)


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


def test_zero_grad_set_to_none_gives_the_same_training_as_zeros(rng):
    """PyTorch's default: grads become None, the next backward writes new arrays, and the
    updates are bit-identical to zeroing in place (a model, its loss and momentum SGD)."""
    from minidl import Sequential, layers
    from minidl.losses import CrossEntropyLoss
    x = rng.standard_normal((6, 5)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    results = []
    for set_to_none in (False, True):
        model = Sequential(layers.Dense(5, 8, rng=0), layers.ReLU(), layers.Dense(8, 3, rng=1))
        optimizer, loss_fn = SGD(model.parameters(), lr=0.1, momentum=0.9), CrossEntropyLoss()
        for _ in range(3):
            loss_fn(model(x), y)
            model.backward(loss_fn.backward(), input_grad=False)
            optimizer.step()
            optimizer.zero_grad(set_to_none=set_to_none)
            assert all((p.grad is None) == set_to_none for p in model.parameters())
        results.append([p.data.copy() for p in model.parameters()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_zero_grad_set_to_none_skips_parameters_without_a_new_grad(rng):
    params = make_params(rng, np.float32)
    optimizer = SGD(params, lr=0.1, momentum=0.9)
    optimizer.zero_grad(set_to_none=True)
    before = [p.data.copy() for p in params]
    params[0].accumulate_grad(np.ones(SHAPES[0], np.float64))  # any float dtype, cast
    assert params[0].grad.dtype == np.float32 and params[0].grad.shape == SHAPES[0]
    optimizer.step()  # only params[0] has a gradient (as in PyTorch)
    np.testing.assert_allclose(params[0].data, before[0] - 0.1, rtol=1e-6)
    for p, old in zip(params[1:], before[1:]):
        np.testing.assert_array_equal(p.data, old)
    optimizer.zero_grad()  # zeros in place leave a None gradient as it is
    assert params[1].grad is None and not np.any(params[0].grad)
    with pytest.raises(TypeError, match=r"^SGD.zero_grad: expected set_to_none to be True or "
                                        r"False, got 1"):
        optimizer.zero_grad(set_to_none=1)


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
            "param_groups": {str(g): {k: np.array(v) for k, v in group.items()}
                             for g, group in enumerate(saved["param_groups"])},
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
    assert set(saved) == {"optimizer", "param_groups", "state"}
    assert saved["param_groups"] == [
        dict(params=[0, 1, 2], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)]


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
    with pytest.raises(ValueError, match=r"param_groups\[0\] holds 3 parameters in the saved state, 2 in"):
        too_few.load_state_dict(saved)
    two_groups = Adam([{"params": params[:1]}, {"params": params[1:]}])
    with pytest.raises(ValueError, match="the saved state has 1 parameter groups, this optimizer has 2"):
        two_groups.load_state_dict(saved)

    broken = adam.state_dict()
    del broken["state"][0]["exp_avg_sq"]
    with pytest.raises(KeyError, match=r"missing state \['exp_avg_sq'\]"):
        fresh.load_state_dict(broken)

    broken = adam.state_dict()
    broken["state"][7] = broken["state"][0]
    with pytest.raises(ValueError, match=r"state for parameter 7, but the optimizer has 3 parameters"):
        fresh.load_state_dict(broken)

    broken = adam.state_dict()
    broken["param_groups"][0]["amsgrad"] = False
    with pytest.raises(KeyError, match=r"param_groups\[0\]: missing hyperparameters \[\], unexpected hyperparameters \['amsgrad'\]"):
        fresh.load_state_dict(broken)

    broken = adam.state_dict()
    broken["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: param_groups\[0\]: expected lr >= 0, got -1.0"):
        fresh.load_state_dict(broken)
    assert fresh.lr == 1e-3 and fresh.state == {}

    with pytest.raises(KeyError, match="missing entry 'state'"):
        fresh.load_state_dict({"optimizer": "Adam", "param_groups": []})


# ----------------------------------------------------------------- hyperparameter errors
@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(lr=-0.1), ValueError, r"SGD: expected lr >= 0, got -0.1"),
    (dict(lr=float("nan")), ValueError, r"SGD: expected lr to be a finite number, got nan"),
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


# ----------------------------------------------------------------- parameter groups
GROUP_CASES = [
    (SGD, dict(lr=0.1, momentum=0.9), [dict(lr=0.01, nesterov=True), dict(weight_decay=0.1)]),
    (SGD, dict(lr=0.1), [dict(momentum=0.5, dampening=0.2), dict()]),
    (Adam, dict(lr=0.01), [dict(betas=(0.8, 0.99)), dict(lr=0.1, weight_decay=0.01, eps=1e-6)]),
]


@pytest.mark.parametrize("cls, defaults, overrides", GROUP_CASES,
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_param_groups_match_torch(rng, cls, defaults, overrides, torch):
    params = make_params(rng, np.float64)
    torch_params = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    splits = [[0], [1, 2]]
    ours = cls([{"params": [params[i] for i in idx], **o} for idx, o in zip(splits, overrides)],
               **defaults)
    theirs = getattr(torch.optim, cls.__name__)(
        [{"params": [torch_params[i] for i in idx], **o} for idx, o in zip(splits, overrides)],
        foreach=False, **defaults)
    assert len(ours.param_groups) == 2 and ours.params == params
    for group, their_group in zip(ours.param_groups, theirs.param_groups):
        for key in cls.HYPERPARAMETERS:
            assert group[key] == their_group[key], key
    for step_grads in make_grads(rng, np.float64):
        for p, tp, g in zip(params, torch_params, step_grads):
            p.grad[...] = g
            tp.grad = torch.tensor(g)
        ours.step()
        theirs.step()
        for p, tp in zip(params, torch_params):
            np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_group_lr_changed_between_steps_is_used(rng):
    p = Parameter(np.zeros(3))
    opt = SGD([p], lr=0.1)
    p.grad[...] = 1.0
    opt.step()
    opt.param_groups[0]["lr"] = np.float64(0.5)  # a scheduler or a user writes the group
    opt.step()
    np.testing.assert_allclose(p.data, -0.6)
    opt.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match=r"SGD param_groups\[0\]: expected lr to be a finite number"):
        opt.step()
    np.testing.assert_allclose(p.data, -0.6)  # the failed step changed nothing
    del opt.param_groups[0]["lr"]
    with pytest.raises(KeyError, match=r"SGD param_groups\[0\]: missing hyperparameters \['lr'\]"):
        opt.step()


def test_lr_attribute_is_the_first_groups():
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(2))
    opt = SGD([a, b], lr=0.1, momentum=0.9)
    assert opt.lr == 0.1 and opt.momentum == 0.9 and opt.nesterov is False
    opt.lr = 0.2
    opt.momentum = 0.5
    assert opt.param_groups[0]["lr"] == 0.2 and opt.param_groups[0]["momentum"] == 0.5
    with pytest.raises(ValueError, match="SGD: expected momentum >= 0, got -1"):
        opt.momentum = -1
    assert opt.momentum == 0.5
    two = Adam([{"params": [a]}, {"params": [b], "lr": 0.1}])
    assert two.lr == 1e-3 and two.betas == (0.9, 0.999)
    with pytest.raises(ValueError, match=r"Adam: cannot set lr for 2 parameter groups at once; set optimizer.param_groups\[i\]\['lr'\]"):
        two.lr = 0.5
    with pytest.raises(AttributeError, match="SGD has no attribute 'learning_rate'"):
        opt.learning_rate


def test_add_param_group_and_its_state(rng):
    first, second = Parameter(np.ones(2)), Parameter(np.ones(3))
    opt = Adam([first], lr=0.1)
    first.grad[...] = 1.0
    opt.step()
    opt.add_param_group({"params": second, "lr": 0.5})
    assert opt.params == [first, second]
    assert opt.param_groups[1] == dict(params=[second], lr=0.5, betas=(0.9, 0.999), eps=1e-8,
                                       weight_decay=0.0)
    second.grad[...] = 1.0
    opt.step()
    np.testing.assert_allclose(second.data, 0.5)  # Adam's first step moves by lr
    assert opt.state[0]["step"] == 2 and opt.state[1]["step"] == 1
    assert opt.state_dict()["param_groups"][1]["params"] == [1]


@pytest.mark.parametrize("params, error, pattern", [
    ([{"lr": 0.1}], KeyError, r"SGD param_groups\[0\]: missing 'params'"),
    ([{"params": [], "learning_rate": 0.1}], KeyError, r"unknown keys \['learning_rate'\]; expected 'params' and any of \['lr'"),
    ([{"params": []}, [Parameter(np.zeros(1))]], TypeError, r"SGD: expected every parameter group to be a dict, got list at index 1"),
    ({"params": []}, TypeError, r"got a single dict \(wrap it in a list"),
    ([{"params": [Parameter(np.zeros(1))], "momentum": "high"}], TypeError, r"SGD param_groups\[0\]: expected momentum to be a real number, got 'high' \(str\)"),
    ([{"params": [np.zeros(1)]}], TypeError, r"SGD: expected every element of params to be a Parameter, got ndarray at index 0"),
])
def test_param_group_errors(params, error, pattern):
    with pytest.raises(error, match=pattern):
        SGD(params, lr=0.1)


def test_same_parameter_in_two_groups_is_rejected():
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match=r"SGD: the same Parameter appears twice \(index 1\)"):
        SGD([{"params": [p]}, {"params": [p]}], lr=0.1)
    opt = SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="the same Parameter appears twice"):
        opt.add_param_group({"params": [p]})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("cls, defaults, overrides", GROUP_CASES,
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_group_state_dict_round_trip(rng, cls, defaults, overrides):
    def build(params):
        return cls([{"params": params[:1], **overrides[0]}, {"params": params[1:], **overrides[1]}],
                   **defaults)

    params_a = make_params(rng, np.float32)
    grads = make_grads(rng, np.float32, steps=6)
    opt_a = build(params_a)
    run_steps(opt_a, params_a, grads[:3])
    opt_a.param_groups[1]["lr"] = 0.03  # as a scheduler would
    opt_a.param_groups[1]["initial_lr"] = 0.1
    saved = pickle.loads(pickle.dumps(opt_a.state_dict()))
    params_b = [Parameter(p.data.copy()) for p in params_a]
    opt_b = build(params_b)
    opt_b.load_state_dict(saved)
    assert opt_b.param_groups[1]["lr"] == 0.03 and opt_b.param_groups[1]["initial_lr"] == 0.1
    assert "initial_lr" not in opt_b.param_groups[0]
    assert [g["params"] for g in opt_b.param_groups] == [params_b[:1], params_b[1:]]
    run_steps(opt_a, params_a, grads[3:])
    run_steps(opt_b, params_b, grads[3:])
    for p_a, p_b in zip(params_a, params_b):
        assert np.array_equal(p_a.data, p_b.data)


def test_state_saved_before_param_groups_still_loads(rng):
    params = make_params(rng, np.float64)
    grads = make_grads(rng, np.float64, steps=4)
    opt = SGD(params, lr=0.1, momentum=0.9)
    run_steps(opt, params, grads[:2])
    new = opt.state_dict()
    old_format = {"optimizer": "SGD", "state": new["state"],
                  "hyperparameters": {k: v for k, v in new["param_groups"][0].items() if k != "params"}}
    copies = [Parameter(p.data.copy()) for p in params]
    other = SGD(copies, lr=1.0)
    other.load_state_dict(old_format)
    assert other.hyperparameters() == opt.hyperparameters()
    run_steps(opt, params, grads[2:])
    run_steps(other, copies, grads[2:])
    for p, q in zip(params, copies):
        assert np.array_equal(p.data, q.data)


# ----------------------------------------------------------------- issue 10: clear errors
@pytest.mark.parametrize("cls, kwargs, error, pattern", [
    (SGD, dict(lr=0.1, momentum="0.9"), TypeError, r"SGD: expected momentum to be a real number, got '0.9' \(str\)"),
    (SGD, dict(lr=0.1, momentum=None), TypeError, r"SGD: expected momentum to be a real number, got None \(NoneType\)"),
    (SGD, dict(lr=0.1, momentum=np.array([0.9, 0.8])), TypeError, r"SGD: expected momentum to be a real number, got array"),
    (SGD, dict(lr=0.1, momentum=float("nan")), ValueError, r"SGD: expected momentum to be a finite number, got nan"),
    (SGD, dict(lr=float("inf")), ValueError, r"SGD: expected lr to be a finite number, got inf"),
    (SGD, dict(lr=0.1, weight_decay=float("nan")), ValueError, r"SGD: expected weight_decay to be a finite number"),
    (SGD, dict(lr=0.1, dampening=float("-inf")), ValueError, r"SGD: expected dampening to be a finite number"),
    (SGD, dict(lr=True), TypeError, r"SGD: expected lr to be a real number, got True \(bool\)"),
    (SGD, dict(lr=0.1, momentum=1j), TypeError, r"SGD: expected momentum to be a real number, got 1j \(complex\)"),
    (Adam, dict(betas=(float("nan"), 0.999)), ValueError, r"Adam: expected betas\[0\] to be a finite number, got nan"),
    (Adam, dict(betas=("0.9", 0.999)), TypeError, r"Adam: expected betas\[0\] to be a real number, got '0.9' \(str\)"),
    (Adam, dict(eps=float("nan")), ValueError, r"Adam: expected eps to be a finite number"),
    (Adam, dict(eps="tiny"), TypeError, r"Adam: expected eps to be a real number, got 'tiny'"),
    (Adam, dict(weight_decay=float("inf")), ValueError, r"Adam: expected weight_decay to be a finite number"),
])
def test_non_numeric_and_non_finite_hyperparameters(cls, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        cls([Parameter(np.zeros(2))], **kwargs)


def test_numpy_scalars_are_accepted_as_python_floats():
    opt = SGD([Parameter(np.zeros(2, np.float32))], lr=np.float64(0.1), momentum=np.array(0.9))
    assert type(opt.lr) is float and type(opt.momentum) is float


def _adam_state(rng):
    params = make_params(rng, np.float64)
    opt = Adam(params)
    run_steps(opt, params, make_grads(rng, np.float64, 2))
    return opt, opt.state_dict()


@pytest.mark.parametrize("step, pattern", [
    (-1, r"expected 'step' to be an integer >= 0, got -1"),
    (2.5, r"expected 'step' to be an integer >= 0, got 2.5"),
    ("3", r"expected 'step' to be an integer >= 0, got '3'"),
    (float("nan"), r"expected 'step' to be an integer >= 0, got nan"),
    (np.array([1, 2]), r"expected 'step' to be an integer >= 0, got array"),
    (True, r"expected 'step' to be an integer >= 0, got True"),
])
def test_optimizer_state_with_a_bad_step_is_rejected(rng, step, pattern):
    opt, saved = _adam_state(rng)
    before = {i: dict(entry) for i, entry in opt.state.items()}
    saved["state"][1]["step"] = step
    with pytest.raises(ValueError, match=r"Adam.load_state_dict: parameter 1: " + pattern):
        opt.load_state_dict(saved)
    assert opt.state[1]["step"] == before[1]["step"] == 2


@pytest.mark.parametrize("step", [3, 3.0, np.int64(3), np.array(3), np.array(3.0)])
def test_integral_steps_in_any_form_load(rng, step):
    opt, saved = _adam_state(rng)
    saved["state"][0]["step"] = step
    opt.load_state_dict(saved)
    assert opt.state[0]["step"] == 3 and type(opt.state[0]["step"]) is int


def test_malformed_optimizer_states_give_clear_errors(rng):
    opt, saved = _adam_state(rng)

    def broken(change):
        state = opt.state_dict()
        change(state)
        return state

    cases = [
        (lambda s: s["state"][0].update(exp_avg=np.array(["a"] * 12).reshape(4, 3)), TypeError,
         r"Adam.load_state_dict: parameter 0: expected 'exp_avg' to be an array of real numbers, got dtype <U1"),
        (lambda s: s["state"][0].update(exp_avg=None), TypeError, r"expected 'exp_avg' to be an array of real numbers, got dtype object"),
        (lambda s: s["state"][0].update(exp_avg=np.zeros((3, 4))), ValueError, r"parameter 0: expected 'exp_avg' of shape \(4, 3\), got \(3, 4\)"),
        (lambda s: s["state"][0].update(momentum_buffer=np.zeros((4, 3))), KeyError, r"parameter 0: missing state \[\], unexpected state \['momentum_buffer'\]"),
        (lambda s: s["state"].update({"first": {}}), ValueError, r"expected integer parameter indices as the keys of 'state', got 'first'"),
        (lambda s: s.update(state=[1, 2]), TypeError, r"expected 'state' to be a dict, got list"),
        (lambda s: s["state"].update({0: [1, 2]}), TypeError, r"parameter 0: expected a dict of state, got list"),
        (lambda s: s.update(param_groups="all"), TypeError, r"expected 'param_groups' to be a list, got str"),
        (lambda s: s["param_groups"][0].update(params=["a", "b", "c"]), TypeError, r"param_groups\[0\]: expected 'params' to hold integer indices"),
        (lambda s: s["param_groups"][0].pop("params"), KeyError, r"param_groups\[0\]: missing 'params'"),
        (lambda s: s["param_groups"][0].update(betas=(0.9,)), ValueError, r"Adam.load_state_dict: param_groups\[0\]: expected betas to be a pair"),
        (lambda s: s["param_groups"][0].update(initial_lr="x"), TypeError, r"param_groups\[0\]: expected initial_lr to be a real number"),
        (lambda s: s.pop("param_groups") and s.update(hyperparameters=[0.1]), TypeError, r"expected 'hyperparameters' to be a dict, got list"),
        (lambda s: s["param_groups"][0].pop("eps"), KeyError, r"missing hyperparameters \['eps'\]"),
    ]
    before = opt.state_dict()
    for change, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            opt.load_state_dict(broken(change))
    with pytest.raises(TypeError, match=r"Adam.load_state_dict: expected a dict, got list"):
        opt.load_state_dict([])
    after = opt.state_dict()  # nothing was modified by the failed loads
    assert after["param_groups"] == before["param_groups"]
    for i in before["state"]:
        for key, value in before["state"][i].items():
            assert np.array_equal(after["state"][i][key], value)


def test_repr_with_groups():
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(2))
    opt = Adam([{"params": [a]}, {"params": [b], "lr": 0.1}])
    assert repr(opt) == ("Adam(2 groups: [0] 1 parameters, lr=0.001, betas=(0.9, 0.999), eps=1e-08, "
                         "weight_decay=0.0; [1] 1 parameters, lr=0.1, betas=(0.9, 0.999), eps=1e-08, "
                         "weight_decay=0.0)")


def test_optim_package_keeps_its_names():
    from minidl import optim
    assert optim.SGD is SGD and optim.Adam is Adam and optim.Optimizer is Optimizer
    assert optim.lr_scheduler.StepLR.__module__ == "minidl.optim.lr_scheduler"


def test_a_failing_step_changes_no_group(rng):
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(3))
    opt = SGD([{"params": [a]}, {"params": [b]}], lr=0.1, momentum=0.9)
    a.grad[...] = 1.0
    b.grad = np.zeros(4)  # wrong shape, in the second group
    with pytest.raises(ValueError, match=r"SGD: parameter 1 has data of shape \(3,\) but grad of shape \(4,\)"):
        opt.step()
    np.testing.assert_array_equal(a.data, 0)
    assert opt.state == {}
