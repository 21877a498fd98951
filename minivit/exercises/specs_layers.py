"""Exercises 1-4: Linear, LayerNorm, GELU, softmax.

Each has its cases (float64, seeded, several shapes, random mixed-sign
upstream gradients), the correct backward written out in plain NumPy with a
``bug`` switch that makes it one typical mistake, and the hints for each.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from minivit.exercises import library
from minivit.exercises.base import Case, Exercise, Mistake

OVERWRITE_HINTS = (
    "{g} holds only this call's gradient: the grads you were given already held "
    "something, and your backward replaced it instead of adding to it.",
    "A weight can be used more than once before the optimizer step (in a loop, or in "
    "two places of a model); each use's gradient must be added: the dict arrives "
    "non-empty on purpose.",
    "Write grads[...] += ... (or grads[...] = grads[...] + ...), never grads[...] = ...",
)


def _prefill(rng, params):
    return {n: rng.standard_normal(v.shape) for n, v in params.items()}


def _shape(a):
    return tuple(a.shape)


# -- 1. Linear ----------------------------------------------------------------------
def linear_cases():
    rng = np.random.default_rng(101)
    cases = []
    for x_shape, n_out in (((5, 4), 4), ((2, 3, 4), 5), ((1, 6), 2)):
        x = rng.standard_normal(x_shape)
        params = {"W": rng.standard_normal((n_out, x_shape[-1])),
                  "b": rng.standard_normal(n_out)}
        cases.append(Case(f"x {_shape(x)}, W {_shape(params['W'])}, b ({n_out},)",
                          {"x": x}, params, dy=rng.standard_normal((*x_shape[:-1], n_out)),
                          prefill=_prefill(rng, params)))
    return cases


def linear_backward(dy, cache, grads, bug=None):
    x, W = cache
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, W.shape[0])
    dW = (x2.T @ dy2).T if bug != "dW_transposed" else x2.T @ dy2
    if bug == "mean":
        dW = dW / len(x2)
    db = dy2.sum(axis=0)
    if bug == "overwrite":
        grads["W"], grads["b"] = dW, db
    else:
        grads["W"] += dW
        grads["b"] += db
    dx = dy2 @ (W if bug != "dx_transposed" else W.T)
    return dx.reshape(x.shape)


LINEAR = Exercise(
    name="linear", title="Linear", kind="params", page="layers/linear.md",
    make_cases=linear_cases, reference=library.linear, correct=linear_backward,
    mistakes=[
        Mistake("overwrite", "dW overwritten instead of accumulated",
                partial(linear_backward, bug="overwrite"),
                tuple(h.format(g="dW (or db)") for h in OVERWRITE_HINTS)),
        Mistake("dx_transposed", "dx multiplied by W transposed",
                partial(linear_backward, bug="dx_transposed"), (
                    "dx has the right shape only because this W is square: it is "
                    "multiplied by W^T where it needs W.",
                    "y_j = sum_i x_i W_ji, so dL/dx_i = sum_j dy_j W_ji: the sum runs "
                    "over W's first index.",
                    "dx = dy @ W   (shapes (R, out) @ (out, in) -> (R, in))")),
        Mistake("dW_transposed", "dW transposed",
                partial(linear_backward, bug="dW_transposed"), (
                    "dW is transposed: its shape matches only because W is square here.",
                    "W has shape (out, in), so dW does too: row j of dW belongs to "
                    "output j.",
                    "dW += dy_rows.T @ x_rows   ((out, R) @ (R, in) -> (out, in))")),
        Mistake("mean", "dW averaged over the rows instead of summed",
                partial(linear_backward, bug="mean"), (
                    "dW is divided by the number of rows: each row's outer product "
                    "must be added, not averaged.",
                    "The loss already averages over the batch (cross-entropy divides "
                    "by B): dividing again here would count it twice.",
                    "dW += dy_rows.T @ x_rows, no division")),
    ],
    tensor_hints={
        "x": ("dx: every output y_j depends on every x_i through W_ji.",
              "dL/dx_i = sum_j dy_j W_ji, for each row separately.",
              "dx = dy @ W, reshaped to x's shape"),
        "W": ("dW: each row of x contributes one outer product dy_row^T x_row.",
              "dL/dW_ji = sum over rows r of dy_rj x_ri.",
              "grads['W'] += dy_rows.T @ x_rows"),
        "b": ("db: the bias is added to every row, so it gets the sum of the rows' dy.",
              "Broadcasting in the forward pass is summation in the backward pass.",
              "grads['b'] += dy_rows.sum(axis=0)"),
    },
    solution=("minivit.layers.linear:Linear.forward", "minivit.layers.linear:Linear.backward"),
    checks="dx, dW, db for x of 2 and 3 dimensions (one W square), dW and db accumulated "
           "onto gradients already present",
    swap="Linear")


# -- 2. LayerNorm ----------------------------------------------------------------------
def layernorm_cases():
    rng = np.random.default_rng(102)
    cases = []
    for x_shape in ((4, 6), (2, 3, 5), (3, 1, 8)):
        D = x_shape[-1]
        x = rng.standard_normal(x_shape) * 2 + 0.5
        params = {"gamma": rng.standard_normal(D) + 1.0, "beta": rng.standard_normal(D)}
        cases.append(Case(f"x {x_shape}, gamma ({D},), beta ({D},)", {"x": x}, params,
                          consts=(1e-6,), dy=rng.standard_normal(x_shape),
                          prefill=_prefill(rng, params)))
    return cases


def layernorm_backward(dy, cache, grads, bug=None):
    xhat, rstd, gamma = cache
    D = xhat.shape[-1]
    dy2, xhat2 = dy.reshape(-1, D), xhat.reshape(-1, D)
    dgamma = (dy2 * xhat2).sum(axis=0) if bug != "dgamma" else dy2.sum(axis=0)
    dbeta = dy2.sum(axis=0)
    if bug == "overwrite":
        grads["gamma"], grads["beta"] = dgamma, dbeta
    else:
        grads["gamma"] += dgamma
        grads["beta"] += dbeta
    dxhat = dy * gamma if bug != "gamma" else dy
    mean_term = dxhat.mean(axis=-1, keepdims=True) if bug != "mean" else 0.0
    var_term = xhat * (dxhat * xhat).mean(axis=-1, keepdims=True) if bug != "variance" else 0.0
    return (rstd if bug != "rstd" else 1.0) * (dxhat - mean_term - var_term)


LAYERNORM = Exercise(
    name="layernorm", title="LayerNorm", kind="params", page="layers/layernorm.md",
    make_cases=layernorm_cases, reference=library.layernorm, correct=layernorm_backward,
    mistakes=[
        Mistake("mean", "the mean term is missing",
                partial(layernorm_backward, bug="mean"), (
                    "dx is off by the same amount on every element of a row: the path "
                    "from x through the mean mu is missing.",
                    "mu = mean(x) depends on every x_i, and xhat_j depends on mu: that "
                    "path contributes -mean(dxhat) to every dx_i of the row.",
                    "dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), "
                    "means over the last axis with keepdims=True")),
        Mistake("variance", "the variance path is dropped",
                partial(layernorm_backward, bug="variance"), (
                    "dx is off by a multiple of xhat on each row: the path from x "
                    "through the variance is missing.",
                    "var = mean((x - mu)^2) depends on every x_i, and rstd on var: that "
                    "path contributes -xhat * mean(dxhat * xhat).",
                    "dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))")),
        Mistake("gamma", "gamma forgotten in dxhat",
                partial(layernorm_backward, bug="gamma"), (
                    "dx is what it would be if gamma were all ones: gamma is forgotten "
                    "on the way from dy to dxhat.",
                    "y = xhat * gamma + beta, so dL/dxhat = dy * gamma (elementwise, "
                    "gamma broadcast over the rows).",
                    "dxhat = dy * gamma, then the dx line uses dxhat")),
        Mistake("rstd", "the factor rstd is missing",
                partial(layernorm_backward, bug="rstd"), (
                    "dx is off by a factor per row: the factor rstd = 1/sqrt(var + eps) "
                    "in front is missing.",
                    "xhat = (x - mu) * rstd: every path from x to xhat is scaled by rstd.",
                    "dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))")),
        Mistake("dgamma", "dgamma without xhat",
                partial(layernorm_backward, bug="dgamma"), (
                    "dgamma equals dbeta: the factor xhat is missing.",
                    "y = xhat * gamma + beta: gamma multiplies xhat, so its gradient "
                    "carries xhat.",
                    "grads['gamma'] += (dy * xhat) summed over all rows")),
        Mistake("overwrite", "dgamma/dbeta overwritten instead of accumulated",
                partial(layernorm_backward, bug="overwrite"),
                tuple(h.format(g="dgamma (or dbeta)") for h in OVERWRITE_HINTS)),
    ],
    tensor_hints={
        "x": ("dx: x reaches the output along three paths (directly, through mu, "
              "through var); the sum of all three is needed.",
              "Write dxhat = dy * gamma first; then each path is one term of a row mean.",
              "dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))"),
        "gamma": ("dgamma: gamma multiplies xhat on every row.",
                  "Sum over every leading dimension, keep the last one.",
                  "grads['gamma'] += (dy * xhat).reshape(-1, D).sum(axis=0)"),
        "beta": ("dbeta: beta is added to every row.",
                 "Broadcasting in the forward pass is summation in the backward pass.",
                 "grads['beta'] += dy.reshape(-1, D).sum(axis=0)"),
    },
    solution=("minivit.layers.layernorm:LayerNorm.forward",
              "minivit.layers.layernorm:LayerNorm.backward"),
    checks="dx, dgamma, dbeta for inputs of 2 and 3 dimensions, gamma not all ones, "
           "dgamma and dbeta accumulated onto gradients already present",
    swap="LayerNorm")


# -- 3. GELU -------------------------------------------------------------------------
def gelu_cases():
    rng = np.random.default_rng(103)
    return [Case(f"x {s}", {"x": rng.standard_normal(s) * 2}, dy=rng.standard_normal(s))
            for s in ((7,), (3, 4), (2, 3, 5))]


def gelu_backward(dy, cache, bug=None):
    x, t = cache
    c = 0.044715 if bug == "cube" else 3 * 0.044715
    du = np.sqrt(2 / np.pi) * (1 + c * x ** 2) if bug != "chain" else 1.0
    dt = 1 - t ** 2 if bug != "tanh" else 1 - t
    first = 0.5 * (1 + t) if bug != "product" else 0.0
    dydx = first + 0.5 * x * dt * du
    return dydx if bug == "no_dy" else dy * dydx


def _gelu_mistake(key, title, hints):
    return Mistake(key, title, partial(gelu_backward, bug=key), hints)


GELU_FORMULA = "dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)"
GELU = Exercise(
    name="gelu", title="GELU", kind="plain", page="layers/gelu.md",
    make_cases=gelu_cases, reference=library.gelu, correct=gelu_backward,
    mistakes=[
        _gelu_mistake("product", "the product rule's first term is missing", (
            "dx misses a term: y = 0.5 x (1 + t) is a product, and x appears in both "
            "factors.",
            "Product rule: d/dx [0.5 x (1 + t)] = 0.5 (1 + t) + 0.5 x dt/dx.",
            GELU_FORMULA)),
        _gelu_mistake("tanh", "the derivative of tanh taken as 1 - t", (
            "The derivative of tanh is wrong: d tanh(u)/du = 1 - tanh(u)^2, not 1 - tanh(u).",
            "t = tanh(u), so dt/du = 1 - t^2 (t is in the cache).",
            GELU_FORMULA)),
        _gelu_mistake("cube", "the derivative of x^3 without its 3", (
            "du/dx is wrong: the derivative of 0.044715 x^3 is 3 * 0.044715 x^2.",
            "u = sqrt(2/pi) (x + 0.044715 x^3), so du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2).",
            GELU_FORMULA)),
        _gelu_mistake("chain", "du/dx missing from the chain rule", (
            "The chain rule stops at u: dt/dx = dt/du * du/dx, and du/dx is missing.",
            "du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2).",
            GELU_FORMULA)),
        _gelu_mistake("no_dy", "dy/dx returned without multiplying by dy", (
            "You return dy/dx itself: the backward must return dL/dx = dy * dy/dx.",
            "The upstream gradient dy (called dL/dy elsewhere) multiplies the local "
            "derivative, elementwise.",
            "return dy * dydx")),
    ],
    tensor_hints={"x": ("dx = dy * dy/dx, elementwise; dy/dx needs the product rule and "
                        "the chain rule through u and t.",
                        "dt/du = 1 - t^2; du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2).",
                        GELU_FORMULA)},
    solution=("minivit.layers.gelu:GELU.forward", "minivit.layers.gelu:GELU.backward",
              "minivit.layers.gelu:gelu_forward_kernel"),
    checks="dx for inputs of 1, 2 and 3 dimensions, values spread over [-6, 6]",
    swap="GELU")


# -- 4. softmax ------------------------------------------------------------------------
def softmax_cases():
    rng = np.random.default_rng(104)
    return [Case(f"s {s}", {"s": rng.standard_normal(s) * 2}, dy=rng.standard_normal(s))
            for s in ((4, 4), (2, 3, 5, 5), (3, 6))]


def softmax_backward(da, cache, bug=None):
    (a,) = cache
    if bug == "no_sum":
        return a * da
    if bug == "diagonal":
        return a * (1 - a) * da
    axis = -2 if bug == "axis" else -1
    row = (da * a).sum(axis=axis, keepdims=bug != "keepdims")
    return a * (da - row)


SOFTMAX_FORMULA = "ds = a * (da - (da * a).sum(axis=-1, keepdims=True))"
SOFTMAX = Exercise(
    name="softmax", title="softmax", kind="plain", page="layers/attention.md",
    make_cases=softmax_cases, reference=library.softmax, correct=softmax_backward,
    mistakes=[
        Mistake("axis", "the row sum taken over the wrong axis",
                partial(softmax_backward, bug="axis"), (
                    "The sum in ds runs over the wrong axis: each row of a is a "
                    "softmax, so the sum must run along that row, the last axis.",
                    "On a square matrix a sum over axis -2 has the right shape and the "
                    "wrong values: sum(da * a) must be taken over axis=-1.",
                    SOFTMAX_FORMULA)),
        Mistake("keepdims", "the row sum without keepdims", 
                partial(softmax_backward, bug="keepdims"), (
                    "The row sums are subtracted from the wrong elements: without "
                    "keepdims=True the (n,) vector of row sums broadcasts along the rows.",
                    "sum(..., axis=-1) drops the axis; broadcasting then lines the sums "
                    "up with the columns. keepdims=True keeps them as a column.",
                    SOFTMAX_FORMULA)),
        Mistake("no_sum", "the off-diagonal part of the Jacobian is missing",
                partial(softmax_backward, bug="no_sum"), (
                    "ds misses a term: every a_i depends on every s_j (they share the "
                    "denominator), not only on s_i.",
                    "J_ij = a_i (delta_ij - a_j); summed against da this gives "
                    "a_j (da_j - sum_i da_i a_i).",
                    SOFTMAX_FORMULA)),
        Mistake("diagonal", "only the diagonal of the Jacobian",
                partial(softmax_backward, bug="diagonal"), (
                    "ds uses only the diagonal of the Jacobian, a_i (1 - a_i): every "
                    "a_i also depends on the other s_j.",
                    "J_ij = a_i (delta_ij - a_j): the off-diagonal terms -a_i a_j add up "
                    "to a row sum.",
                    SOFTMAX_FORMULA)),
    ],
    tensor_hints={"s": ("ds: every a_i depends on every s_j of its row; the Jacobian "
                        "J_ij = a_i (delta_ij - a_j).",
                        "sum_i da_i J_ij collapses to one row sum, broadcast back.",
                        SOFTMAX_FORMULA)},
    solution=("minivit.layers.attention:softmax",
              "minivit.layers.attention:scores_backward_kernel"),
    checks="ds for a square matrix (where a sum over the wrong axis keeps its shape), "
           "a stack of square score matrices and a non-square matrix")
