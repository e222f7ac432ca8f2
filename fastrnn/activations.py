"""Names of the activations fastrnn supports and their kernel codes."""

from fastrnn.backends.numba_kernels import LINEAR, RELU, SIGMOID, TANH

# Element-wise activations, computed by the activation kernels.
ELEMENTWISE = {"linear": LINEAR, "tanh": TANH, "relu": RELU, "sigmoid": SIGMOID}

# softmax works on rows and is handled apart (and fused with cross-entropy).
SOFTMAX = "softmax"


def canonical_name(activation, argument="activation", allow_softmax=True):
    """Return the lower-case name of ``activation``, checking that it is supported.

    ``None`` means linear, as in Keras.
    """
    if activation is None:
        return "linear"
    if not isinstance(activation, str):
        raise TypeError(
            f"{argument} must be a string naming an activation, "
            f"got {type(activation).__name__} {activation!r}"
        )
    name = activation.lower()
    supported = sorted(ELEMENTWISE) + ([SOFTMAX] if allow_softmax else [])
    if name not in supported:
        raise ValueError(f"{argument} must be one of {supported}, got {activation!r}")
    return name
