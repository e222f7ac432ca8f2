"""Plain NumPy reference for the arithmetic of fastrnn's compiled kernels.

Written to be read, not to be fast: one Python loop per time step, fresh arrays
for every result, no buffers.  Every function computes in the dtype of its
inputs, so the same code serves the float64 gradient checks and the float32
comparisons with the kernels.

Shape letters: B batch, T time steps, D input features, H hidden units, K output
units, N rows (B, or T*B for a Dense applied at every step).  Sequences are
time-major, (T, B, .), except in the whole-model functions at the bottom, which
take the user's batch-major (B, T, D).

Weights follow Keras's order and names: a SimpleRNN has kernel W (D, H),
recurrent_kernel U (H, H) and bias b (H,); a Dense has kernel V (H, K) and bias
c (K,).  The recurrence is h_t = act(x_t W + h_{t-1} U + b) with h_{-1} = 0.
"""

import numpy as np

ACTIVATIONS = ("linear", "tanh", "relu", "sigmoid")

# The integer codes the kernels take for the element-wise activations.
ACTIVATION_CODES = {"linear": 0, "tanh": 1, "relu": 2, "sigmoid": 3}

# Keras clips probabilities to [CLIP, 1 - CLIP] in cross-entropy on probabilities.
PROBABILITY_CLIP = 1e-7


# element-wise activations ---------------------------------------------------------


def activation(z, name):
    """act(z) element-wise."""
    if name == "linear":
        return z.copy()
    if name == "tanh":
        return np.tanh(z)
    if name == "relu":
        return np.maximum(z, 0)
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    raise ValueError(f"unknown activation {name!r}")


def activation_derivative(z, name):
    """act'(z) element-wise, from the pre-activation z."""
    if name == "linear":
        return np.ones_like(z)
    if name == "tanh":
        return 1 - np.tanh(z) ** 2
    if name == "relu":
        return (z > 0).astype(z.dtype)
    if name == "sigmoid":
        s = 1 / (1 + np.exp(-z))
        return s * (1 - s)
    raise ValueError(f"unknown activation {name!r}")


# SimpleRNN ------------------------------------------------------------------------


def rnn_forward(x_tm, W, U, b, name):
    """Run the recurrence over every step.

    x_tm (T, B, D) -> (hs, zs), both (T, B, H): hidden states and pre-activations.
    """
    T, B, _ = x_tm.shape
    H = W.shape[1]
    hs = np.zeros((T, B, H), dtype=x_tm.dtype)
    zs = np.zeros((T, B, H), dtype=x_tm.dtype)
    h = np.zeros((B, H), dtype=x_tm.dtype)
    for t in range(T):
        zs[t] = x_tm[t] @ W + h @ U + b
        h = activation(zs[t], name)
        hs[t] = h
    return hs, zs


def rnn_backward(dh_out, x_tm, hs, zs, W, U, name):
    """Backpropagation through time for :func:`rnn_forward`.

    dh_out (T, B, H) is the gradient of every step's output; (1, B, H) that of the
    last step's output only.  Returns dW (D, H), dU (H, H), db (H,), dx (T, B, D).
    """
    T, B, _ = x_tm.shape
    every_step = dh_out.shape[0] == T
    dW = np.zeros_like(W)
    dU = np.zeros_like(U)
    db = np.zeros(W.shape[1], dtype=W.dtype)
    dx = np.zeros_like(x_tm)
    dh_from_next = np.zeros_like(hs[0])
    for t in range(T - 1, -1, -1):
        dh = dh_from_next.copy()
        if every_step:
            dh += dh_out[t]
        elif t == T - 1:
            dh += dh_out[0]
        dz = dh * activation_derivative(zs[t], name)
        dW += x_tm[t].T @ dz
        if t > 0:
            dU += hs[t - 1].T @ dz
        db += dz.sum(axis=0)
        dx[t] = dz @ W.T
        dh_from_next = dz @ U.T
    return dW, dU, db, dx


# Dense, softmax and losses --------------------------------------------------------


def dense_forward(x, V, c):
    """x (N, H) -> x V + c, (N, K)."""
    return x @ V + c


def dense_backward(dy, x, V):
    """Gradients of :func:`dense_forward`: dV (H, K), dc (K,), dx (N, H)."""
    return x.T @ dy, dy.sum(axis=0), dy @ V.T


def softmax(z):
    """Row-wise softmax of z (N, K)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def softmax_backward(dp, p):
    """dz for p = softmax(z): the Jacobian diag(p) - p p^T applied row by row."""
    dz = np.empty_like(dp)
    for i in range(p.shape[0]):
        jacobian = np.diag(p[i]) - np.outer(p[i], p[i])
        dz[i] = jacobian @ dp[i]
    return dz


def log_softmax(z):
    """Row-wise log softmax of z (N, K), by log-sum-exp."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits, y):
    """Mean over rows of -sum_k y_k log softmax(logits)_k.  logits, y (N, K)."""
    return -(y * log_softmax(logits)).sum() / logits.shape[0]


def softmax_cross_entropy_gradient(logits, y):
    """d/dlogits of :func:`softmax_cross_entropy`: (p sum_k y_k - y) / N."""
    p = softmax(logits)
    return (p * y.sum(axis=1, keepdims=True) - y) / logits.shape[0]


def probability_cross_entropy(output, y):
    """Keras's cross-entropy on probabilities not produced by a fused softmax.

    Each row is normalised to sum to one and clipped to [CLIP, 1 - CLIP].
    Returns (loss, dloss/doutput), both (N, K)-shaped where it applies.
    """
    N = output.shape[0]
    total = output.sum(axis=1, keepdims=True)
    q = output / total
    clipped = np.clip(q, PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    loss = -(y * np.log(clipped)).sum() / N

    # The clip passes no gradient outside its range.
    inside = (q > PROBABILITY_CLIP) & (q < 1 - PROBABILITY_CLIP)
    dq = np.where(inside, -y / clipped, 0.0) / N
    doutput = np.empty_like(output)
    for i in range(N):
        # q_j = o_j / S:  dq_j/do_l = (delta_jl - q_j) / S
        jacobian = (np.eye(output.shape[1]) - q[i][:, None]) / total[i]
        doutput[i] = jacobian.T @ dq[i]
    return loss, doutput


def mean_squared_error(output, y):
    """Mean of (output - y)^2 over every element.  Returns (loss, gradient)."""
    diff = output - y
    return (diff**2).mean(), 2 * diff / diff.size


def one_hot(labels, K, dtype=np.float64):
    """Rows of the K x K identity picked by integer labels of any shape."""
    return np.eye(K, dtype=dtype)[np.asarray(labels, dtype=np.int64)]


# optimizers -----------------------------------------------------------------------


def adam_step(w, g, m, v, t, learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Step t (counting from 1) of Adam in Keras's form.  Returns new (w, m, v).

    alpha_t = lr sqrt(1 - beta_2^t) / (1 - beta_1^t);  epsilon goes with sqrt(v).
    """
    m = m + (g - m) * (1 - beta_1)
    v = v + (g * g - v) * (1 - beta_2)
    alpha = learning_rate * np.sqrt(1 - beta_2**t) / (1 - beta_1**t)
    return w - alpha * m / (np.sqrt(v) + epsilon), m, v


def sgd_step(w, g, velocity, learning_rate, momentum=0.0, nesterov=False):
    """SGD with Keras's (Nesterov) momentum.  Returns new (w, velocity)."""
    if momentum == 0:
        return w - learning_rate * g, velocity
    velocity = momentum * velocity - learning_rate * g
    if nesterov:
        return w + momentum * velocity - learning_rate * g, velocity
    return w + velocity, velocity


def rmsprop_step(w, g, velocity, learning_rate, rho=0.9, epsilon=1e-7):
    """RMSprop without momentum, in Keras 3's form.  Returns new (w, velocity).

    Unlike Adam's, this epsilon goes inside the root: lr g / sqrt(v + epsilon).
    """
    velocity = rho * velocity + (1 - rho) * g * g
    return w - learning_rate * g / np.sqrt(velocity + epsilon), velocity


# whole model: SimpleRNN -> Dense -> output activation -> loss ----------------------


def model_output_rows(
    params, x, rnn_activation, output_activation="softmax", return_sequences=False
):
    """Rows of the model output and what the backward pass needs.

    params [W, U, b, V, c]; x (B, T, D) batch-major.  The rows are (B, K) or, with
    return_sequences, (T*B, K) in time-major order.
    """
    W, U, b, V, c = params
    x_tm = np.ascontiguousarray(x.transpose(1, 0, 2))
    hs, zs = rnn_forward(x_tm, W, U, b, rnn_activation)
    if return_sequences:
        features = hs.reshape(-1, hs.shape[2])
    else:
        features = hs[-1]
    logits = dense_forward(features, V, c)
    if output_activation == "softmax":
        out = softmax(logits)
    else:
        out = activation(logits, output_activation)
    return out, (x_tm, hs, zs, features, logits)


def target_rows(y, K, loss, return_sequences=False):
    """Targets as float rows lined up with :func:`model_output_rows`."""
    y = np.asarray(y)
    if loss == "sparse_categorical_crossentropy":
        y = one_hot(y, K)
    if return_sequences:
        y = y.transpose(1, 0, 2)
    return y.reshape(-1, K).astype(np.float64)


def model_loss_and_gradients(
    params,
    x,
    y,
    rnn_activation,
    output_activation="softmax",
    loss="categorical_crossentropy",
    return_sequences=False,
):
    """Loss of the model on one batch and its gradient for every weight.

    y as the user gives it: one-hot (B, K) / (B, T, K), or integer labels (B,) /
    (B, T) for the sparse loss.  Softmax with a cross-entropy loss is fused, as
    Keras does; other outputs with cross-entropy are normalised and clipped.
    Returns (loss, [dW, dU, db, dV, dc]).
    """
    W, U, b, V, c = params
    out, (x_tm, hs, zs, features, logits) = model_output_rows(
        params, x, rnn_activation, output_activation, return_sequences
    )
    K = V.shape[1]
    rows = target_rows(y, K, loss, return_sequences)

    # loss and its gradient w.r.t. the logits
    cross_entropy = loss in (
        "categorical_crossentropy",
        "sparse_categorical_crossentropy",
    )
    if cross_entropy and output_activation == "softmax":
        value = softmax_cross_entropy(logits, rows)
        dlogits = softmax_cross_entropy_gradient(logits, rows)
    else:
        if cross_entropy:
            value, dout = probability_cross_entropy(out, rows)
        else:
            value, dout = mean_squared_error(out, rows)
        if output_activation == "softmax":
            dlogits = softmax_backward(dout, out)
        else:
            dlogits = dout * activation_derivative(logits, output_activation)

    # Dense, then back through time
    dV, dc, dfeatures = dense_backward(dlogits, features, V)
    T, B, H = hs.shape
    if return_sequences:
        dh_out = dfeatures.reshape(T, B, H)
    else:
        dh_out = dfeatures.reshape(1, B, H)
    dW, dU, db, _ = rnn_backward(dh_out, x_tm, hs, zs, W, U, rnn_activation)
    return value, [dW, dU, db, dV, dc]


def model_loss(
    params,
    x,
    y,
    rnn_activation,
    output_activation="softmax",
    loss="categorical_crossentropy",
    return_sequences=False,
):
    """The loss alone, for finite differences."""
    return model_loss_and_gradients(
        params, x, y, rnn_activation, output_activation, loss, return_sequences
    )[0]


def train_step(
    params,
    state,
    x,
    y,
    rnn_activation,
    optimizer="adam",
    learning_rate=0.001,
    step=1,
    loss="categorical_crossentropy",
    **options,
):
    """One training step of SimpleRNN + Dense(softmax) with a cross-entropy loss.

    state is the optimizer's state, one list per weight: [m, v] for Adam,
    [velocity] for SGD and RMSprop.  ``options`` go to the optimizer (beta_1,
    momentum, rho, ...).  Returns (loss, new params, new state).
    """
    value, grads = model_loss_and_gradients(
        params, x, y, rnn_activation, "softmax", loss
    )
    new_params, new_state = [], []
    for w, g, s in zip(params, grads, state):
        if optimizer == "adam":
            w, m, v = adam_step(w, g, s[0], s[1], step, learning_rate, **options)
            s = [m, v]
        elif optimizer == "sgd":
            w, velocity = sgd_step(w, g, s[0], learning_rate, **options)
            s = [velocity]
        elif optimizer == "rmsprop":
            w, velocity = rmsprop_step(w, g, s[0], learning_rate, **options)
            s = [velocity]
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}")
        new_params.append(w)
        new_state.append(s)
    return value, new_params, new_state


def initial_state(params, optimizer):
    """Zero optimizer state for :func:`train_step`."""
    count = 2 if optimizer == "adam" else 1
    return [[np.zeros_like(w) for _ in range(count)] for w in params]
