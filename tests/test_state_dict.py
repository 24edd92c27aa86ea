"""Module.load_state_dict: every entry checked before any is written, strict=False as in PyTorch."""
import numpy as np
import pytest

from minidl import optim
from minidl.layers.dense import Dense
from minidl.layers.module import IncompatibleKeys
from minidl.layers.normalization import BatchNorm
from minidl.layers.activation import ReLU
from minidl.model import Sequential


def _model(seed=0):
    model = Sequential(Dense(4, 8, rng=seed), BatchNorm(8), ReLU(), Dense(8, 3, rng=seed + 1))
    model(np.random.default_rng(seed).standard_normal((16, 4)).astype(np.float32))  # running stats
    return model


def _assert_unchanged(model, before):
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert after[key].dtype == value.dtype
        np.testing.assert_array_equal(after[key], value, err_msg=key)


BAD_ENTRIES = [
    ("3.weight", np.zeros((2, 2), np.float32), ValueError,
     r"'3.weight' expected shape \(3, 8\), got \(2, 2\)"),
    ("1.num_batches_tracked", np.array(3.0), TypeError,
     r"'1.num_batches_tracked' expected integer values \(int64\), got dtype float64"),
    ("1.num_batches_tracked", np.array(np.nan), TypeError, "NaN, infinite or fractional"),
    ("1.num_batches_tracked", np.array(2**64 - 1, np.uint64), ValueError, "outside the range of int64"),
    ("0.weight", np.ones((8, 4), np.int32), TypeError,
     r"'0.weight' expected floating values \(float32\), got dtype int32"),
    ("0.bias", np.ones(8, bool), TypeError, "got dtype bool"),
    ("1.running_var", np.full(8, 1e300), ValueError, "'1.running_var' holds 1e\\+300, which overflows float32"),
    ("1.running_mean", [0.0] * 8, TypeError,
     r"'1.running_mean' expected a numpy.ndarray of shape \(8,\) and dtype float32, got list"),
    ("1.running_mean", None, TypeError, "got NoneType"),
    ("1.num_batches_tracked", 5, TypeError, "got int"),
    ("0.bias", np.array([object()] * 8), TypeError, "got dtype object"),
]


@pytest.mark.parametrize("key, value, error, message", BAD_ENTRIES)
@pytest.mark.parametrize("strict", [True, False])
def test_a_bad_entry_is_refused_and_nothing_is_written(key, value, error, message, strict):
    model = _model()
    before = model.state_dict()
    state = _model(5).state_dict()  # every other entry differs and is valid
    state[key] = value
    with pytest.raises(error, match=message) as info:
        model.load_state_dict(state, strict=strict)
    assert "Sequential.load_state_dict" in str(info.value)
    _assert_unchanged(model, before)


def test_missing_and_unexpected_keys_strict():
    model = _model()
    before = model.state_dict()
    state = _model(5).state_dict()
    del state["1.running_var"]
    state["4.weight"] = np.zeros(3, np.float32)
    with pytest.raises(KeyError, match=r"missing keys \['1.running_var'\], unexpected keys \['4.weight'\]"):
        model.load_state_dict(state)
    _assert_unchanged(model, before)


def test_strict_false_loads_what_matches_and_returns_the_rest():
    model = _model()
    source = _model(5)
    state = source.state_dict()
    del state["1.running_var"]
    state["extra.buffer"] = np.zeros(2)
    old_var = model[1].running_var.copy()
    result = model.load_state_dict(state, strict=False)
    assert isinstance(result, IncompatibleKeys) and isinstance(result, tuple)
    assert result.missing_keys == ["1.running_var"] and result.unexpected_keys == ["extra.buffer"]
    np.testing.assert_array_equal(model[1].running_var, old_var)
    np.testing.assert_array_equal(model[0].weight.data, source[0].weight.data)
    assert model.load_state_dict(source.state_dict()) == IncompatibleKeys([], [])


def test_values_are_copied_in_place_and_cast_to_the_targets_dtype():
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    weight, running_mean = model[0].weight.data, model[1].running_mean
    state = {k: v.astype(np.float64) if v.dtype.kind == "f" else v.astype(np.int32)
             for k, v in _model(5).state_dict().items()}
    model.load_state_dict(state)
    assert model[0].weight.data is weight and opt.params[0].data is weight  # identity kept
    assert model[1].running_mean is running_mean
    assert weight.dtype == np.float32 and model[1].num_batches_tracked.dtype == np.int64
    np.testing.assert_array_equal(weight, state["0.weight"].astype(np.float32))
    model.load_state_dict({**state, "0.weight": np.float16(2.0) * np.ones((8, 4), np.float16)})
    assert np.all(weight == 2.0)
    model.load_state_dict({**state, "0.bias": np.full(8, np.nan)})  # NaN loads, as in PyTorch
    assert np.isnan(model[0].bias.data).all()


def test_not_a_mapping():
    with pytest.raises(TypeError, match="expected a mapping"):
        _model().load_state_dict([("0.weight", np.zeros((8, 4)))])


def test_missing_and_unexpected_keys_match_pytorch(torch):
    ours = _model()
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                 torch.nn.Linear(8, 3))
    state = ours.state_dict()
    for key in ("1.running_var", "3.bias"):
        del state[key]
    state["5.weight"] = np.zeros(1, np.float32)
    state["1.extra"] = np.zeros(1, np.float32)
    result = ours.load_state_dict(state, strict=False)
    expected = theirs.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()},
                                      strict=False)
    assert result.missing_keys == expected.missing_keys
    assert result.unexpected_keys == expected.unexpected_keys
