"""The textbook backpropagation worked example, computed by funcnn.

A 2-2-2 network of sigmoid units, `serial(Dense(2), Sigmoid(), Dense(2), Sigmoid())`,
with the squared error `E = sum(0.5 * (target - out)**2)` (`funcnn.mse`):

    inputs  i1 = 0.05, i2 = 0.10          targets  t1 = 0.01, t2 = 0.99
    net_h1 = w1 i1 + w2 i2 + b1           net_o1 = w5 out_h1 + w6 out_h2 + b2
    net_h2 = w3 i1 + w4 i2 + b1           net_o2 = w7 out_h1 + w8 out_h2 + b2
    w1..w8 = 0.15 0.20 0.25 0.30 0.40 0.45 0.50 0.55, b1 = 0.35, b2 = 0.60

The biases stay fixed, as in the text; the weights take plain SGD steps with
learning rate 0.5. Every figure printed is computed (in float64), none is typed in:
the forward pass, the backward pass as the texts walk it (each layer's delta, the
error term dE/d(layer output), and the weight gradients, all read from one
`funcnn.backward_trace`), the weights after one step, and the error after `--steps`
steps. In the model, net_o1 is the output Dense layer's output and out_o1 the
output Sigmoid's.

    python experiments/backprop_worked_example.py [--grad custom|autodiff]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funcnn

LAYERS = [funcnn.Dense(2), funcnn.Sigmoid(), funcnn.Dense(2), funcnn.Sigmoid()]
KEYS = [f"{i:02d}_{layer.name}" for i, layer in enumerate(LAYERS)]  # as serial names
LEARNING_RATE = 0.5


def textbook_params():
    """Dense params `{"w": (F_out, F_in), "b": (F_out,)}`: row j feeds unit j."""
    hidden = {"w": jnp.array([[0.15, 0.20], [0.25, 0.30]]), "b": jnp.full(2, 0.35)}
    output = {"w": jnp.array([[0.40, 0.45], [0.50, 0.55]]), "b": jnp.full(2, 0.60)}
    return {KEYS[0]: hidden, KEYS[1]: {}, KEYS[2]: output, KEYS[3]: {}}


def weight_names(params):
    """{"w1": value, ..., "w8": value}, in the text's numbering."""
    flat = np.concatenate(
        [
            np.asarray(params[KEYS[0]]["w"]).ravel(),
            np.asarray(params[KEYS[2]]["w"]).ravel(),
        ]
    )
    return {f"w{i + 1}": float(v) for i, v in enumerate(flat)}


def make_optimizer():
    """SGD on the weights; the biases get zero updates (held fixed, as in the text)."""
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if path[-1].key == "b" else "train", textbook_params()
    )
    return optax.multi_transform(
        {"train": optax.sgd(LEARNING_RATE), "frozen": optax.set_to_zero()}, labels
    )


def show_backward_pass(model, params, state, x, t, grad):
    """Prints the texts' backward-pass figures, each read from one
    `funcnn.backward_trace`: a layer's `delta_out` is dE/d(its output), its
    `delta_in` dE/d(its input), `param_grads` dE/d(its weights)."""
    trace = funcnn.backward_trace(
        model, params, state, (x, t), loss=funcnn.mse, grad=grad, train=False
    )
    hidden, hidden_sigmoid, output, output_sigmoid = (trace[key] for key in KEYS)
    sigmoid_slope = output_sigmoid.delta_in / output_sigmoid.delta_out
    steps = [
        ("dE/dout_o1", output_sigmoid.delta_out, "-(target_o1 - out_o1)"),
        ("dout_o1/dnet_o1", sigmoid_slope, "out_o1 (1 - out_o1)"),
        ("delta_o1 = dE/dnet_o1", output.delta_out, "dE/dout_o1 * dout_o1/dnet_o1"),
        ("dnet_o1/dw5", output.input, "out_h1"),
        ("dE/dw5", output.param_grads["w"], "delta_o1 * out_h1"),
        ("dE/dout_h1", hidden_sigmoid.delta_out, "delta_o1 w5 + delta_o2 w7"),
        ("delta_h1 = dE/dnet_h1", hidden.delta_out, "dE/dout_h1 * out_h1 (1 - out_h1)"),
        (
            "dE/dw1",
            hidden.param_grads["w"],
            f"delta_h1 * i1, i1 = {float(x[0, 0]):.2f}",
        ),
    ]
    print(f"Backward pass (funcnn.backward_trace, loss {float(trace.loss):.9f}):")
    width = max(len(label) for label, _, _ in steps)
    for label, value, rule in steps:
        value = float(np.asarray(value).ravel()[0])
        print(f"  {label.ljust(width)} = {value:.9f}   [{rule}]")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grad", choices=("custom", "autodiff"), default="custom")
    parser.add_argument("--steps", type=int, default=10000)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps: expected a positive number of steps, got {args.steps}.")
    jax.config.update("jax_enable_x64", True)  # float64, to match the text's digits

    model = funcnn.serial(*LAYERS)
    x, t = jnp.array([[0.05, 0.10]]), jnp.array([[0.01, 0.99]])
    params = textbook_params()
    _, init_params, state = model.init(jax.random.key(0), x.shape)
    assert jax.tree_util.tree_structure(init_params) == jax.tree_util.tree_structure(
        params
    ), "textbook_params must match the model's parameter tree"

    def forward(p):
        return model.apply(p, state, x, grad=args.grad)[0]

    def loss(p):
        return funcnn.mse(forward(p), t)

    opt = make_optimizer()

    @jax.jit
    def step(carry, _=None):
        p, opt_state = carry
        updates, opt_state = opt.update(jax.grad(loss)(p), opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    @jax.jit
    def train(p, steps):
        return jax.lax.fori_loop(0, steps, lambda _, c: step(c), (p, opt.init(p)))[0]

    print(f'Backprop worked example (grad="{args.grad}", float64)')
    print("Forward pass:")
    out = forward(params)
    print(f"  out_o1 = {float(out[0, 0]):.9f}")
    print(f"  out_o2 = {float(out[0, 1]):.9f}")
    print(f"  E_total = {float(loss(params)):.9f}")
    show_backward_pass(model, params, state, x, t, args.grad)

    one, _ = step((params, opt.init(params)))
    print(f"After one SGD step (learning rate {LEARNING_RATE}, biases held fixed):")
    for name, value in weight_names(one).items():
        print(f"  {name} = {value:.9f}")
    print(
        f"  E_total after 1 step = {float(loss(one)):.9f}  (the texts print "
        "0.291027924 because they rounded intermediate values)"
    )

    final = train(params, args.steps)
    out = forward(final)
    print(f"After {args.steps} steps:")
    print(f"  E_total after {args.steps} steps = {float(loss(final)):.6e}")
    print(f"  out_o1 = {float(out[0, 0]):.9f} (target 0.01)")
    print(f"  out_o2 = {float(out[0, 1]):.9f} (target 0.99)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
