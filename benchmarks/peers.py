"""The optional JAX peer of the benchmark: a JAX ``jit`` training step of a minidl network.

(The other optional peer, ``torch.compile``, is ``run.torch_train_step(..., compile=True)``.)
:func:`jax_train_step` returns a training step -- forward, cross-entropy, backward, SGD with
momentum -- of the same network with the same initial parameters as a minidl model, as a
callable that runs one step and returns the loss (a Python float, so the asynchronous
dispatch has finished the step). It runs in the worker processes of ``run.py`` only.

JAX has no BatchNorm or max-pooling layer in its core, so :func:`jax_train_step` writes the
network in plain ``jax.numpy`` and ``jax.lax``, layer by layer from the minidl model:
``lax.conv_general_dilated``, BatchNorm with the batch mean and biased variance and
running averages updated with the unbiased one (PyTorch's convention; the variance in one pass,
``E[x^2] - E[x]^2``, as Flax's ``BatchNorm`` computes it by default: XLA runs its gradient 4x
faster than the two-pass form's, 4.7 against 21 ms on a (64, 28, 28, 32) batch), ``lax.reduce_window`` for
max-pooling (a reshape and ``max`` when the windows tile the image: its gradient is twice as
fast on XLA's CPU backend as ``reduce_window``'s, 45 against 87 ms for the MNIST CNN's
convolutions and pools; ties can only be the zeros of a ReLU, whose gradient is 0 either way),
and SGD with momentum as PyTorch's (``v = momentum * v + g``, ``p -= lr * v``).
The whole step is one ``jax.jit`` function; parameters, velocities and running statistics are
donated to it, so it updates them in place as the other frameworks do. The activations are NHWC
(the layout of Flax and of JAX's examples; XLA's CPU convolutions are faster in it than in NCHW:
83 against 100 ms for the two convolutions of the MNIST CNN, forward and backward, batch 64): the
images are stored NHWC once, the convolution weights HWIO, and the features are put back in
(C, H, W) order before the first Dense, so the parameters and the losses are the same as in the
NCHW frameworks.
"""
import itertools


def jax_train_step(model, minidl, batches, lr, momentum):
    """A jitted JAX training step of the minidl Sequential ``model`` (same initial state).

    Supports the layers of the MNIST and CIFAR CNNs: Conv2D, BatchNorm (training mode), ReLU,
    MaxPool2D, Flatten, Dense.

    Returns:
        callable: one step per call, cycling through ``batches``; returns the loss.
    Raises:
        TypeError: a layer it does not support.
    """
    import jax
    import jax.numpy as jnp
    from jax import lax

    layers = minidl.layers
    plan = []  # (kind, child name, settings)
    for name, layer in model._modules.items():
        if isinstance(layer, layers.Conv2D):
            plan.append(("conv", name, (layer.stride, layer.padding)))
        elif isinstance(layer, layers.BatchNorm):
            plan.append(("batch_norm", name, (layer.eps, layer.momentum)))
        elif isinstance(layer, layers.Dense):
            plan.append(("dense", name, None))
        elif isinstance(layer, layers.ReLU):
            plan.append(("relu", name, None))
        elif isinstance(layer, layers.MaxPool2D):
            plan.append(("max_pool", name, (layer.kernel_size, layer.stride)))
        elif isinstance(layer, layers.Flatten):
            plan.append(("flatten", name, None))
        else:
            raise TypeError(f"jax_train_step: {type(layer).__name__} is not supported")
    state = model.state_dict()
    params = {key: jnp.asarray(value.transpose(2, 3, 1, 0) if value.ndim == 4 else value)
              for key, value in state.items()  # convolution weights OIHW -> HWIO
              if key.endswith(".weight") or key.endswith(".bias")}
    buffers = {key: jnp.asarray(value) for key, value in state.items()
               if key.endswith(".running_mean") or key.endswith(".running_var")}
    velocity = {key: jnp.zeros_like(value) for key, value in params.items()}

    def forward(params, buffers, x):
        new_buffers = {}
        for kind, name, settings in plan:
            if kind == "conv":
                (sh, sw), (ph, pw) = settings
                x = lax.conv_general_dilated(x, params[name + ".weight"], (sh, sw),
                                             [(ph, ph), (pw, pw)],
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
                if name + ".bias" in params:
                    x = x + params[name + ".bias"]
            elif kind == "batch_norm":  # over every axis but the last (channels)
                eps, factor = settings
                axes = tuple(range(x.ndim - 1))
                count = x.size // x.shape[-1]
                mean = jnp.mean(x, axis=axes)  # biased variance, one pass (as Flax's default)
                var = jnp.maximum(jnp.mean(jnp.square(x), axis=axes) - jnp.square(mean), 0)
                scale = lax.rsqrt(var + eps) * params[name + ".weight"]
                x = x * scale + (params[name + ".bias"] - mean * scale)
                unbiased = lax.stop_gradient(var) * (count / (count - 1))
                for key, batch in ((".running_mean", lax.stop_gradient(mean)),
                                   (".running_var", unbiased)):
                    new_buffers[name + key] = (1 - factor) * buffers[name + key] + factor * batch
            elif kind == "dense":
                x = x @ params[name + ".weight"].T
                if name + ".bias" in params:
                    x = x + params[name + ".bias"]
            elif kind == "relu":
                x = jnp.maximum(x, 0)
            elif kind == "max_pool":
                (kh, kw), (sh, sw) = settings
                n, h, w, c = x.shape
                if (kh, kw) == (sh, sw) and h % kh == 0 and w % kw == 0:  # tiling windows
                    x = x.reshape(n, h // kh, kh, w // kw, kw, c).max(axis=(2, 4))
                else:
                    x = lax.reduce_window(x, -jnp.inf, lax.max, (1, kh, kw, 1),
                                          (1, sh, sw, 1), "VALID")
            else:  # flatten in PyTorch's (C, H, W) order
                x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        return x, new_buffers

    def loss_fn(params, buffers, x, y):
        logits, new_buffers = forward(params, buffers, x)
        log_probs = jax.nn.log_softmax(logits, axis=1)
        loss = -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1))
        return loss, new_buffers

    def train_step(params, velocity, buffers, x, y):
        (loss, new_buffers), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, buffers, x, y)
        velocity = jax.tree_util.tree_map(lambda v, g: momentum * v + g, velocity, grads)
        params = jax.tree_util.tree_map(lambda p, v: p - lr * v, params, velocity)
        return params, velocity, new_buffers, loss

    jitted = jax.jit(train_step, donate_argnums=(0, 1, 2))
    cycle = itertools.cycle([(jnp.asarray(x.transpose(0, 2, 3, 1) if x.ndim == 4 else x),
                              jnp.asarray(y.astype("int32"))) for x, y in batches])
    current = {"params": params, "velocity": velocity, "buffers": buffers}

    def step():
        x, y = next(cycle)
        current["params"], current["velocity"], current["buffers"], loss = jitted(
            current["params"], current["velocity"], current["buffers"], x, y)
        return float(loss)  # waits for the step, as a training loop that logs its loss does
    return step
