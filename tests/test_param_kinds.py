"""Unusual parameters and gradients: layouts, shared memory, swapped dtypes, missing grads.

Each kind is stepped eagerly, compiled and with ``flatten=True`` and compared with a float64
reference of the formula; what signify cannot write is refused naming the parameter, before
any state is made.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import signify

LR = 2.0**-4  # a power of two: x - lr * s rounds once, as the float64 reference cast down

MODES = {
    "eager": dict(compile=False),
    # the 4 compiled tensors in one graph (the two slices of one storage together), unpadded:
    # the default chunk of 8 adds 4 empty tensors, compile time that tests nothing here
    "compiled": dict(compile=True, compile_chunk=4),
    "flat": dict(compile=False, flatten=True),
    "flat-compiled": dict(compile=True, flatten=True),
}


def _kinds(compiled):
    """Parameters of unusual layouts and dtypes (one param group), and the gradient each
    gets at step ``s`` (None: no gradient that step). Compiled runs leave out the float64
    parameter and the missing gradient, each of which costs more graphs (seconds each)."""
    big = torch.randn(40)
    params = {
        "transposed": torch.nn.Parameter(torch.randn(6, 4).t()),
        "channels_last": torch.nn.Parameter(
            torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
        ),
        "slice_a": torch.nn.Parameter(big[3:15]),  # two slices of one storage, disjoint
        "slice_b": torch.nn.Parameter(big[20:29].view(3, 3)),
    }
    if not compiled:
        params["fp64"] = torch.nn.Parameter(torch.randn(7, dtype=torch.float64))

    def grad(name, p, s):
        if name == "transposed":  # an expanded (stride 0) gradient
            return torch.randn(1, p.shape[1]).expand(p.shape)
        if name == "slice_a" and s % 2 == 1 and not compiled:
            return None  # no gradient every other step: its state must not advance
        if name == "slice_b":  # a gradient laid out unlike its parameter
            return torch.randn(p.shape).t().contiguous().t()
        return torch.randn(p.shape, dtype=p.dtype)

    return big, params, grad


@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("mode", list(MODES))
def test_unusual_layouts_step_like_the_float64_signum_formula(mode, maximize, monkeypatch):
    """Signum (SGD momentum, sign of the buffer): transposed, channels_last, slices of one
    storage, float64, expanded and transposed gradients, a gradient missing every other step.
    Every mode gives the reference's values bit for bit (lr a power of two)."""
    compiled = mode.endswith("compiled")
    if compiled and maximize:
        pytest.skip("one compiled case per mode keeps the file fast")
    monkeypatch.setenv("SIGNIFY_LAYOUT", "flat")  # one lane: one graph per pass
    big, params, grad = _kinds(compiled)
    names = list(params)
    opt = signify.signify(torch.optim.SGD, **MODES[mode])(
        list(params.items()), lr=LR, momentum=0.9, maximize=maximize
    )
    ref = {n: p.detach().double().clone() for n, p in params.items()}
    buf: dict[str, torch.Tensor] = {}
    steps = dict.fromkeys(names, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flatten=True steps per tensor while a grad is missing
        for s in range(4):
            for n, p in params.items():
                g = grad(n, p, s)
                p.grad = g
                if g is None:
                    continue
                g64 = g.double() * (-1.0 if maximize else 1.0)
                buf[n] = g64.clone() if n not in buf else 0.9 * buf[n] + g64
                ref[n] = (ref[n] - LR * buf[n].sign()).to(p.dtype).double()
                steps[n] += 1
            opt.step()
    for n, p in params.items():
        assert p.shape == ref[n].shape
        torch.testing.assert_close(p.detach().double(), ref[n], rtol=0, atol=0, msg=n)
        assert opt.state[p]["momentum_buffer"].shape == p.shape
        torch.testing.assert_close(
            opt.state[p]["momentum_buffer"].double(), buf[n], rtol=1e-6, atol=1e-6, msg=n
        )
    assert params["channels_last"].is_contiguous(memory_format=torch.channels_last)
    if not mode.startswith("flat"):  # flatten re-homes parameters (signify.flat)
        assert torch.equal(big[3:15], params["slice_a"].detach())


def test_a_parameter_swapped_to_complex_is_refused_at_the_step():
    """A ``.data`` swapped for a complex tensor after construction: refused naming it,
    nothing changed (it used to step the real part and drop the imaginary one)."""
    w = torch.nn.Parameter(torch.randn(4))
    other = torch.nn.Parameter(torch.randn(3))
    opt = signify.signify(torch.optim.Adam)([{"params": [other]}, {"params": [w]}], lr=0.1)
    w.data = torch.randn(4, dtype=torch.complex64)
    w.grad = torch.randn(4, dtype=torch.complex64)
    other.grad = torch.randn(3)
    before = w.detach().clone(), other.detach().clone()
    with pytest.raises(ValueError, match=r"param group 1, params\[0\].*complex64"):
        opt.step()
    assert torch.equal(w.detach(), before[0]) and torch.equal(other.detach(), before[1])
    assert len(opt.state) == 0


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", ["same_memory", "overlapping_slices"])
def test_parameters_sharing_elements_are_refused_in_every_mode(mode, kind):
    """Two parameters over the same elements: compiled, inductor failed on the aliased
    written inputs; with flatten=True each was re-homed apart and the tie silently broke.
    Now every mode refuses, naming both, before any state is made."""
    if kind == "same_memory":
        a = torch.nn.Parameter(torch.randn(5))
        b = torch.nn.Parameter(a.data)  # a second Parameter over the same memory
    else:
        big = torch.randn(8)
        a, b = torch.nn.Parameter(big[0:5]), torch.nn.Parameter(big[3:8])
    opt = signify.signify(torch.optim.Adam, **MODES[mode])(
        [("enc.weight", a), ("dec.weight", b)], lr=0.1
    )
    a.grad, b.grad = torch.randn(5), torch.randn(5)
    before = a.detach().clone(), b.detach().clone()
    with pytest.raises(ValueError, match=r"'enc.weight'.*'dec.weight'.*overlap in memory"):
        opt.step()
    assert torch.equal(a.detach(), before[0]) and torch.equal(b.detach(), before[1])
    assert len(opt.state) == 0


def test_the_same_parameter_twice_is_refused_like_torch():
    p = torch.nn.Parameter(torch.randn(3))
    for cls in (torch.optim.Adam, signify.signify(torch.optim.Adam)):
        with pytest.raises(ValueError, match="more than one parameter group"):
            cls([{"params": [p]}, {"params": [p]}], lr=0.1)


def test_a_parameter_that_is_no_dense_block_is_refused_naming_it_without_state():
    """A strided slice (``big[:, 1:3]``): refused at the step, naming the parameter, and
    the refused step makes no state (it used to leave zero moments and a step count 0)."""
    big = torch.randn(10, 4)
    dense = torch.nn.Parameter(torch.randn(3))
    strided = torch.nn.Parameter(big[:, 1:3])
    opt = signify.signify(torch.optim.Adam)([("dense", dense), ("strided", strided)], lr=0.1)
    dense.grad, strided.grad = torch.randn(3), torch.randn(10, 2)
    with pytest.raises(ValueError, match=r"'strided'.*dense parameters only"):
        opt.step()
    assert len(opt.state) == 0


@pytest.mark.parametrize(
    "pdtype, gdtype",
    [(torch.float64, torch.float32), (torch.float32, torch.bfloat16)],
)
def test_flatten_steps_a_gradient_of_another_dtype_per_tensor(pdtype, gdtype):
    """``p.data = p.data.to(dtype)`` keeps the old gradient, of a dtype the parameter no
    longer accepts as ``.grad``. Per tensor signify steps it; flatten=True raised torch's
    'attempting to assign a gradient with dtype' while putting its buffer's view back (the
    parameters already re-homed). It now steps that bucket per tensor, as the default does."""
    results = []
    for flatten in (False, True):
        torch.manual_seed(1234)
        ps = [torch.nn.Parameter(torch.randn(n, dtype=gdtype)) for n in (6, 3)]
        for p in ps:
            p.grad = torch.randn(p.shape, dtype=gdtype)
            p.data = p.data.to(pdtype)
        start = [p.detach().double().clone() for p in ps]
        grads = [p.grad.double().clone() for p in ps]
        opt = signify.signify(torch.optim.Adam, flatten=flatten)(ps, lr=LR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.step()
        for p, x0, g in zip(ps, start, grads):
            assert p.dtype == pdtype
            torch.testing.assert_close(p.detach().double(), x0 - LR * g.sign(), rtol=0, atol=0)
        results.append([p.detach().clone() for p in ps])
    for a, b in zip(*results):
        assert torch.equal(a, b)
