"""The register-tiled products of the Numba backend against float64 NumPy.

Every tile shape, start and factor layout that the train step and predict use,
plus the padded row moves, the choice of vector width, and a compile for a CPU
without AVX (which the machine running the tests need not be).
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastrnn.backends import numba_tiles as nt
from fastrnn.backends._jit import kernel
from fastrnn.backends.numba_tiles import address, factor, tiled_product

BACKEND_INDEPENDENT = True

# float32 sums of up to 78 terms of order 1
TOL = 2e-5


@kernel
def product(c, rows, width, start, s, a1, a1_row, a1_col, b1, k1, a2, a2_row, a2_col,
            b2, k2):  # fmt: skip
    """c (rows, width) flat = start + A1 B1 + A2 B2 through tiled_product."""
    first = factor(address(a1), 0, a1_row, a1_col, address(b1), 0, width, k1)
    second = factor(address(a2), 0, a2_row, a2_col, address(b2), 0, width, k2)
    tiled_product(address(c), 0, width, rows, width, start, address(s), 0, first,
                  second)  # fmt: skip


@kernel
def pad(dst, src, width):
    nt.pad_columns(dst, src, width)


@kernel
def unpad(dst, src, width):
    nt.unpad_columns(dst, src, width)


def left_factor(rng, rows, k, transposed):
    """A (rows, k) in float32, and its (flat, row stride, column stride) as stored:
    transposed, it is read down the columns of a (k, rows) array."""
    a = rng.standard_normal((rows, k)).astype(np.float32)
    if transposed:
        return a, np.ascontiguousarray(a.T).reshape(-1), 1, rows
    return a, a.reshape(-1), k, 1


@pytest.mark.parametrize("transposed", [False, True], ids=["A", "A^T"])
@pytest.mark.parametrize("start", [nt.FROM_ZERO, nt.FROM_ROW, nt.FROM_C])
@pytest.mark.parametrize("k1, k2", [(1, 0), (0, 3), (28, 50)])
@pytest.mark.parametrize("vecs", [1, 4, 5])
@pytest.mark.parametrize("rows", [1, 5, 6, 7, 25])
def test_tiled_product_matches_numpy(rows, vecs, k1, k2, start, transposed):
    rng = np.random.default_rng(rows * 100 + vecs * 10 + k1)
    width = vecs * nt.LANES
    a1, a1_flat, a1_row, a1_col = left_factor(rng, rows, k1, transposed)
    a2, a2_flat, a2_row, a2_col = left_factor(rng, rows, k2, not transposed)
    b1 = rng.standard_normal((k1, width)).astype(np.float32)
    b2 = rng.standard_normal((k2, width)).astype(np.float32)
    s = rng.standard_normal(width).astype(np.float32)
    c0 = rng.standard_normal((rows, width)).astype(np.float32)
    # A guard row after the result must stay untouched.
    c = np.full((rows + 1, width), np.nan, dtype=np.float32)
    c[:rows] = c0

    first = (a1_flat, a1_row, a1_col, b1.reshape(-1), k1)
    second = (a2_flat, a2_row, a2_col, b2.reshape(-1), k2)
    product(c.reshape(-1), rows, width, start, s, *first, *second)

    begin = {nt.FROM_ZERO: 0.0, nt.FROM_ROW: s, nt.FROM_C: c0}[start]
    want = begin + a1.astype(np.float64) @ b1 + a2.astype(np.float64) @ b2
    np.testing.assert_allclose(c[:rows], want, rtol=TOL, atol=TOL)
    assert np.isnan(c[rows]).all()


@pytest.mark.parametrize("transposed", [False, True], ids=["rows", "columns"])
@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 5), (28, 50), (50, 50), (4, 70)])
def test_padded_rows_round_trip(rows, cols, transposed):
    rng = np.random.default_rng(cols)
    src = rng.standard_normal((cols, rows) if transposed else (rows, cols))
    src = src.astype(np.float32)
    src = src.T if transposed else src
    width = (cols + nt.LANES - 1) // nt.LANES * nt.LANES
    padded = np.full(rows * width + nt.LANES, np.nan, dtype=np.float32)
    pad(padded, src, width)
    laid_out = padded[: rows * width].reshape(rows, width)
    np.testing.assert_array_equal(laid_out[:, :cols], src)
    np.testing.assert_array_equal(laid_out[:, cols:], 0.0)
    assert np.isnan(padded[rows * width :]).all()

    back = np.full((rows, cols + 1), np.nan, dtype=np.float32)
    unpad(back[:, :cols], padded, width)
    np.testing.assert_array_equal(back[:, :cols], src)
    # a row's copy stops at cols
    assert np.isnan(back[:, cols]).all()


def test_vector_width_follows_the_compile_features():
    wide = "avx512f" in nt.compile_features()
    assert nt.LANES == (16 if wide else 8)
    assert nt.TILE_ROWS == (6 if wide else 2)
    assert nt.padded(50) == (64 if wide else 56)


# Runs in a fresh process, so that Numba compiles for the CPU it is told.
OTHER_CPU_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from fastrnn.backends import numba_kernels as nk, numba_tiles as nt

    rng = np.random.default_rng(0)
    B, T, D, H, K = 7, 3, 5, 20, 4
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    W, U = (rng.standard_normal(s).astype(np.float32) / 4 for s in ((D, H), (H, H)))
    b, V, c = (rng.standard_normal(s).astype(np.float32) for s in (H, (H, K), K))
    logits = np.empty((B, K), np.float32)
    assert nk.rnn_dense_predict(logits, x, W, U, b, V, c, nk.LINEAR)
    h = np.zeros((B, H))
    for t in range(T):
        h = x[:, t] @ W.astype(np.float64) + h @ U + b
    np.testing.assert_allclose(logits, h @ V + c, rtol=1e-4, atol=1e-4)
    print(nt.LANES)
    """
)


@pytest.mark.parametrize(
    "cpu, features, lanes",
    [("generic", None, "8"), ("haswell", "+avx,+avx2,+fma,+sse4.2,+popcnt", "8")],
    ids=["no-avx", "avx2"],
)
def test_tiles_compile_for_a_cpu_without_avx512(tmp_path, cpu, features, lanes):
    environment = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CACHE_DIR=str(tmp_path))
    if features is not None:
        environment["NUMBA_CPU_FEATURES"] = features
    run = subprocess.run(
        [sys.executable, "-c", OTHER_CPU_SCRIPT],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-1] == lanes


@kernel
def skipping_product(c, rows, width, a, a_row, a_col, b, k_len, zeros, kind, ks):
    """c (rows, width) flat += A B through tiled_product_skipping, zeros from 0."""
    p_c = address(c)
    first = factor(address(a), 0, a_row, a_col, address(b), 0, width, k_len)
    none = factor(p_c, 0, 0, 0, p_c, 0, 0, 0)
    nt.tiled_product_skipping(p_c, 0, width, rows, width, nt.FROM_C, p_c, 0, first,
                              none, address(zeros), 0, kind, address(ks))  # fmt: skip


def nonzero_masks(a):
    """Word i has bit j set where a[i, j] != 0 (a has at most 64 columns)."""
    weights = np.uint64(1) << np.arange(a.shape[1], dtype=np.uint64)
    return ((a != 0) * weights).sum(axis=1, dtype=np.uint64)


@pytest.mark.parametrize("kind", [nt.ZEROS_BY_ROW, nt.ZEROS_BY_K], ids=["row", "k"])
@pytest.mark.parametrize("rows, k_len", [(1, 1), (25, 28), (28, 25), (64, 7), (7, 64)])
def test_skipped_zeros_change_nothing(rows, k_len, kind):
    rng = np.random.default_rng(rows + k_len)
    a = rng.standard_normal((rows, k_len)).astype(np.float32)
    a[rng.random(a.shape) < 0.8] = 0
    a[: rows // 2 + 1, k_len // 2 :] = 0  # whole tiles without a term
    width = 2 * nt.LANES
    b = rng.standard_normal((k_len, width)).astype(np.float32)
    c0 = rng.standard_normal((rows, width)).astype(np.float32)
    if kind == nt.ZEROS_BY_ROW:  # A read row by row, masks over its columns
        flat, a_row, a_col, zeros = a.reshape(-1), k_len, 1, nonzero_masks(a)
    else:  # A read down the columns of its transpose, masks over its rows
        flat, a_row, a_col = np.ascontiguousarray(a.T).reshape(-1), 1, rows
        zeros = nonzero_masks(a.T)
    c = c0.copy()
    ks = np.empty(k_len, dtype=np.int64)
    skipping_product(c.reshape(-1), rows, width, flat, a_row, a_col, b.reshape(-1),
                     k_len, zeros, kind, ks)  # fmt: skip
    want = c0.copy()
    product(want.reshape(-1), rows, width, nt.FROM_C, want[0], flat, a_row, a_col,
            b.reshape(-1), k_len, flat, a_row, a_col, b.reshape(-1), 0)  # fmt: skip
    # exact: a left-out term adds a zero
    np.testing.assert_array_equal(c, want)
