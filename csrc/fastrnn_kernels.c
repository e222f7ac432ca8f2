/*
 * C kernels of fastrnn, the twins of fastrnn/backends/numba_kernels.py.
 *
 * Each kernel follows the arithmetic of its Numba twin step for step (same
 * float32/float64 mix, same summation order where the loop is ours, the same
 * tanh approximation), so the two backends agree to rounding.
 *
 * The two kernels that Numba runs with prange (the fused train step and
 * predict) use OpenMP when the compiler has it and run the same loop serially
 * when it does not; results do not depend on the number of threads.  The wait
 * policy is left at the runtime's default, which Numba's OpenMP layer shares:
 * idle threads spin briefly, then sleep.  At the MNIST shape a train step takes
 * 0.5 ms with it, 0.6 to 0.8 ms with OMP_WAIT_POLICY=passive (each step wakes
 * a sleeping thread), and several ms with active on a busy machine.
 */

#include "fastrnn_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* --------------------------------------------------------------------------
 * helpers
 */

/*
 * Row-major C (M, N) = op(A) op(B) + beta C with a column-major sgemm, where
 * op(X) is X or X^T.  A row-major matrix read column-major is its transpose,
 * so the call computes C^T = op(B)^T op(A)^T: the operands and M, N swap and
 * the transpose flags carry over unchanged.  lda, ldb, ldc are the row
 * lengths of A, B, C as stored.
 */
static void gemm_rm(fr_sgemm_fn sgemm, int trans_a, int trans_b, int M, int N,
                    int K, const float *A, int lda, const float *Bm, int ldb,
                    float beta, float *C, int ldc)
{
    char ta = trans_a ? 'T' : 'N';
    char tb = trans_b ? 'T' : 'N';
    float alpha = 1.0f;

    if (M <= 0 || N <= 0)
        return;
    if (K <= 0) {
        /* An empty sum; BLAS would reject the leading dimensions of 0. */
        for (int i = 0; i < M; i++) {
            float *row = C + (ptrdiff_t)i * ldc;
            for (int j = 0; j < N; j++)
                row[j] = beta == 0.0f ? 0.0f : beta * row[j];
        }
        return;
    }
    /* The Fortran interface takes every argument by non-const pointer; A and B
     * are only read. */
    sgemm(&tb, &ta, &N, &M, &K, &alpha, (float *)Bm, &ldb, (float *)A, &lda, &beta, C,
          &ldc);
}

/* y (N, K) = c (K,) in every row, so a product can then accumulate onto it. */
static void fill_rows(float *y, const float *c, ptrdiff_t N, int K)
{
    for (ptrdiff_t i = 0; i < N; i++)
        memcpy(y + i * K, c, (size_t)K * sizeof(float));
}

/* out (K,) = sum over the N rows of a (N, K), row by row as Numba does. */
static void column_sums(float *out, const float *a, ptrdiff_t N, int K)
{
    for (int k = 0; k < K; k++)
        out[k] = 0.0f;
    for (ptrdiff_t i = 0; i < N; i++) {
        const float *row = a + i * K;
        for (int k = 0; k < K; k++)
            out[k] += row[k];
    }
}

/*
 * tanh(x) = x P(x^2) / Q(x^2) on |x| < 9 and exactly +-1 from there on: the
 * rational fit of numba_kernels.TANH_*, evaluated the same way, so both
 * backends share one approximation (within 4e-7 of tanh), and a saturated unit
 * has a derivative of exactly 0.  glibc's tanhf is a scalar call of
 * about 19 ns; this has no branches, vectorises, and costs well under 1 ns.
 */
static inline float fast_tanhf(float x)
{
    float s, p, q;

    /* Written as max then min with the comparisons of Numba's builtins, so a
     * NaN passes through as a NaN. */
    x = -9.0f > x ? -9.0f : x;
    x = 9.0f < x ? 9.0f : x;
    s = x * x;
    p = 1.825614659e-11f;
    p = p * s - 1.278083062e-08f;
    p = p * s + 9.267563655e-06f;
    p = p * s + 2.920778701e-03f;
    p = p * s + 1.291924417e-01f;
    p = p * s + 9.999999404e-01f;
    q = 2.281024645e-04f;
    q = q * s + 2.376323938e-02f;
    q = q * s + 4.625252783e-01f;
    q = q * s + 1.0f;
    /* a NaN compares false and passes through */
    if (x == 9.0f)
        return 1.0f;
    if (x == -9.0f)
        return -1.0f;
    return x * p / q;
}

/*
 * out (M,) = fast_tanhf(z) (out may be z).  A vector division takes several
 * times as long as the rest of the rational function, so where the compiler
 * targets AVX-512 or AVX2 1 / Q comes from the hardware's approximate
 * reciprocal refined by one Newton step, which is within an ulp or two of the
 * division (Q >= 1 everywhere).
 */
static void tanh_rows(float *out, const float *z, ptrdiff_t M)
{
    ptrdiff_t i = 0;
#if defined(__AVX512F__)
    const __m512 lo = _mm512_set1_ps(-9.0f), hi = _mm512_set1_ps(9.0f);
    const __m512 two = _mm512_set1_ps(2.0f);
    const __m512 one = _mm512_set1_ps(1.0f), minus_one = _mm512_set1_ps(-1.0f);

    for (; i + 16 <= M; i += 16) {
        /* max and min return their second operand for a NaN, which passes */
        __m512 x = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_loadu_ps(z + i)));
        __m512 s = _mm512_mul_ps(x, x), p, q, r;
        p = _mm512_set1_ps(1.825614659e-11f);
        p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(-1.278083062e-08f));
        p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(9.267563655e-06f));
        p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(2.920778701e-03f));
        p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(1.291924417e-01f));
        p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(9.999999404e-01f));
        q = _mm512_set1_ps(2.281024645e-04f);
        q = _mm512_fmadd_ps(q, s, _mm512_set1_ps(2.376323938e-02f));
        q = _mm512_fmadd_ps(q, s, _mm512_set1_ps(4.625252783e-01f));
        q = _mm512_fmadd_ps(q, s, _mm512_set1_ps(1.0f));
        r = _mm512_rcp14_ps(q);
        r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, two));
        r = _mm512_mul_ps(_mm512_mul_ps(x, p), r);
        /* exactly +-1 where x was clamped to +-9 */
        r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, hi, _CMP_EQ_OQ), r, one);
        r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lo, _CMP_EQ_OQ), r, minus_one);
        _mm512_storeu_ps(out + i, r);
    }
#elif defined(__AVX2__) && defined(__FMA__)
    const __m256 lo = _mm256_set1_ps(-9.0f), hi = _mm256_set1_ps(9.0f);
    const __m256 two = _mm256_set1_ps(2.0f);
    const __m256 one = _mm256_set1_ps(1.0f), minus_one = _mm256_set1_ps(-1.0f);

    for (; i + 8 <= M; i += 8) {
        __m256 x = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_loadu_ps(z + i)));
        __m256 s = _mm256_mul_ps(x, x), p, q, r;
        p = _mm256_set1_ps(1.825614659e-11f);
        p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(-1.278083062e-08f));
        p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(9.267563655e-06f));
        p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(2.920778701e-03f));
        p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(1.291924417e-01f));
        p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(9.999999404e-01f));
        q = _mm256_set1_ps(2.281024645e-04f);
        q = _mm256_fmadd_ps(q, s, _mm256_set1_ps(2.376323938e-02f));
        q = _mm256_fmadd_ps(q, s, _mm256_set1_ps(4.625252783e-01f));
        q = _mm256_fmadd_ps(q, s, _mm256_set1_ps(1.0f));
        r = _mm256_rcp_ps(q);
        r = _mm256_mul_ps(r, _mm256_fnmadd_ps(q, r, two));
        r = _mm256_mul_ps(_mm256_mul_ps(x, p), r);
        /* exactly +-1 where x was clamped to +-9 */
        r = _mm256_blendv_ps(r, one, _mm256_cmp_ps(x, hi, _CMP_EQ_OQ));
        r = _mm256_blendv_ps(r, minus_one, _mm256_cmp_ps(x, lo, _CMP_EQ_OQ));
        _mm256_storeu_ps(out + i, r);
    }
#endif
    for (; i < M; i++)
        out[i] = fast_tanhf(z[i]);
}

/* sigmoid(z) = (1 + tanh(z / 2)) / 2 reuses the vectorised tanh. */
static inline float fast_sigmoidf(float z)
{
    return 0.5f + 0.5f * fast_tanhf(0.5f * z);
}

/* --------------------------------------------------------------------------
 * element-wise activations
 */

void fr_activation_forward(float *out, const float *z, ptrdiff_t M, int activation)
{
    /* out (M,), z (M,); out may be z */
    switch (activation) {
    case FR_TANH:
        tanh_rows(out, z, M);
        break;
    case FR_RELU:
        /* max(z, 0) as Numba's builtin computes it: a NaN stays a NaN, which
         * the finiteness checks above the kernels rely on. */
        for (ptrdiff_t i = 0; i < M; i++)
            out[i] = 0.0f > z[i] ? 0.0f : z[i];
        break;
    case FR_SIGMOID:
        for (ptrdiff_t i = 0; i < M; i++)
            out[i] = fast_sigmoidf(z[i]);
        break;
    default:
        if (out != z)
            memmove(out, z, (size_t)M * sizeof(float));
    }
}

void fr_activation_backward(float *dz, const float *dout, const float *out,
                            ptrdiff_t M, int activation)
{
    /* dz (M,), dout (M,), out (M,) = act(z); dz may be dout */
    switch (activation) {
    case FR_TANH:
        for (ptrdiff_t i = 0; i < M; i++)
            dz[i] = dout[i] * (1.0f - out[i] * out[i]);
        break;
    case FR_RELU:
        for (ptrdiff_t i = 0; i < M; i++)
            dz[i] = out[i] > 0.0f ? dout[i] : 0.0f;
        break;
    case FR_SIGMOID:
        for (ptrdiff_t i = 0; i < M; i++)
            dz[i] = dout[i] * out[i] * (1.0f - out[i]);
        break;
    default:
        if (dz != dout)
            memmove(dz, dout, (size_t)M * sizeof(float));
    }
}

/* --------------------------------------------------------------------------
 * register-tiled products of small matrices
 *
 * The fused train step and predict multiply matrices of a few dozen rows and
 * columns at every time step.  BLAS copies (packs) its operands on each call,
 * which at these sizes costs about as much as the product, and each call
 * leaves the activation for another pass over memory.  The tiles below read
 * their operands where they lie and keep a block of the result in registers.
 *
 * Their results are rows of "padded" width Hp, H rounded up to a whole number
 * of vectors of FR_LANES floats; the columns past H of the weights they read
 * are kept at zero, so those of the results stay zero too and no loop needs a
 * remainder.
 */

#if defined(__AVX512F__)
#define FR_LANES 16
#else
#define FR_LANES 8
#endif

#if defined(__GNUC__)
typedef float fr_vec __attribute__((vector_size(FR_LANES * 4)));
/* the same vector at any float-aligned address: rows of Hp floats start at
 * multiples of the vector size only if the buffer does, which NumPy does not
 * promise */
typedef float fr_vec_at __attribute__((vector_size(FR_LANES * 4), aligned(4)));
#define FR_INLINE static inline __attribute__((always_inline))

FR_INLINE fr_vec vec_load(const float *p) { return *(const fr_vec_at *)p; }
FR_INLINE void vec_store(float *p, fr_vec v) { *(fr_vec_at *)p = v; }
FR_INLINE fr_vec vec_zero(void) { return (fr_vec){0}; }
FR_INLINE fr_vec vec_fma(fr_vec acc, float a, fr_vec b) { return acc + a * b; }
FR_INLINE fr_vec vec_add(fr_vec a, fr_vec b) { return a + b; }
#if defined(__x86_64__) || defined(__i386__)
/* Keeps v in a register: left alone, GCC folds the load of a B vector into
 * every one of the tile's FMAs that use it, and the loads, not the FMAs, then
 * bound the tile. */
#define vec_pin(v) __asm__("" : "+v"(v))
#else
#define vec_pin(v) ((void)0)
#endif
#else
/* Compilers without vector extensions get the same code on plain arrays. */
typedef struct {
    float lane[FR_LANES];
} fr_vec;
#define FR_INLINE static __forceinline

FR_INLINE fr_vec vec_load(const float *p)
{
    fr_vec v;
    memcpy(v.lane, p, sizeof v.lane);
    return v;
}
FR_INLINE void vec_store(float *p, fr_vec v) { memcpy(p, v.lane, sizeof v.lane); }
FR_INLINE fr_vec vec_zero(void)
{
    fr_vec v = {{0}};
    return v;
}
FR_INLINE fr_vec vec_fma(fr_vec acc, float a, fr_vec b)
{
    for (int l = 0; l < FR_LANES; l++)
        acc.lane[l] += a * b.lane[l];
    return acc;
}
FR_INLINE fr_vec vec_add(fr_vec a, fr_vec b)
{
    for (int l = 0; l < FR_LANES; l++)
        a.lane[l] += b.lane[l];
    return a;
}
#define vec_pin(v) ((void)0)
#endif

/* Rows and vectors of one tile.  With AVX-512's 32 vector registers a tile of
 * 6 rows by 4 vectors keeps its 24 accumulators, the 4 weight vectors of one k
 * and a broadcast row factor in registers; with 16 registers, 2 rows. */
#if defined(__AVX512F__)
#define FR_TILE_ROWS 6
#else
#define FR_TILE_ROWS 2
#endif
#define FR_TILE_VECS 4

/* Padded width: n rounded up to whole vectors. */
static int padded(int n) { return (n + FR_LANES - 1) / FR_LANES * FR_LANES; }

/*
 * One factor of a product C = A B: A element (r, k) lies at a[r * row + k * col]
 * (so A or its transpose, read in place), B (k_len, Hp) with rows ldb apart.
 */
struct fr_factor {
    const float *a;
    ptrdiff_t row, col;
    const float *b;
    ptrdiff_t ldb;
    int k_len;
    /* Optional: bit masks of A's nonzero elements, which let a tile leave out
     * every k whose A elements are zero in all the tile's rows.  With
     * zeros_by_row, zeros[r] has bit k set if A (r, k) != 0 (k < 64); without,
     * zeros[k] has bit r set if A (r, k) != 0 (r < 64).  NULL: no skipping. */
    const uint64_t *zeros;
    int zeros_by_row;
};

enum fr_tile_start { FR_FROM_ZERO, FR_FROM_ROW, FR_FROM_C };

/* Which terms k of a factor a tile takes: all of them, the set bits of `bits`,
 * or the `count` listed in `list`, always in increasing order.  A term is left
 * out only when its A elements are zero in every row of the tile. */
enum fr_terms_kind { FR_ALL_TERMS, FR_BIT_TERMS, FR_LISTED_TERMS };

struct fr_terms {
    int kind;
    uint64_t bits;
    const int *list;
    int count;
};

/* Index of the lowest set bit of m, which is not 0. */
static inline int lowest_bit(uint64_t m)
{
#if defined(__GNUC__)
    return __builtin_ctzll(m);
#else
    int bit = 0;
    while (!(m & 1)) {
        m >>= 1;
        bit++;
    }
    return bit;
#endif
}

/* acc (R, V vectors) += A (0:R, k) B (k, 0:V vectors) */
FR_INLINE void add_term(fr_vec acc[FR_TILE_ROWS][FR_TILE_VECS],
                        const struct fr_factor *f, ptrdiff_t k, int R, int V)
{
    const float *a_k = f->a + k * f->col;
    const float *b_k = f->b + k * f->ldb;
    float a[FR_TILE_ROWS];

    for (int r = 0; r < R; r++)
        a[r] = a_k[r * f->row];
    for (int v = 0; v < V; v++) {
        fr_vec b = vec_load(b_k + v * FR_LANES);
        vec_pin(b);
        for (int r = 0; r < R; r++)
            acc[r][v] = vec_fma(acc[r][v], a[r], b);
    }
}

/*
 * C[0:R, 0:V vectors] = start + A1 B1 + A2 B2, where start is zero, the row
 * `start_row` in every row, or C itself, and A1 B1 runs over the terms that
 * `terms1` selects.  R and V are constants wherever this is inlined, so the
 * accumulators live in registers.  Each element sums start, then the terms of
 * the first factor in order, then those of the second.
 */
FR_INLINE void tile(float *C, ptrdiff_t ldc, int start, const float *start_row,
                    const struct fr_factor *f1, const struct fr_terms *terms1,
                    const struct fr_factor *f2, int R, int V)
{
    fr_vec acc[FR_TILE_ROWS][FR_TILE_VECS];

    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++)
            acc[r][v] = start == FR_FROM_C      ? vec_load(C + r * ldc + v * FR_LANES)
                        : start == FR_FROM_ROW ? vec_load(start_row + v * FR_LANES)
                                               : vec_zero();
    /* Three loops rather than one with a test inside: a dense loop keeps its
     * addresses in simple increments. */
    if (f1 != NULL && terms1->kind == FR_ALL_TERMS) {
        for (int k = 0; k < f1->k_len; k++)
            add_term(acc, f1, k, R, V);
    } else if (f1 != NULL && terms1->kind == FR_BIT_TERMS) {
        for (uint64_t bits = terms1->bits; bits != 0; bits &= bits - 1)
            add_term(acc, f1, lowest_bit(bits), R, V);
    } else if (f1 != NULL) {
        for (int j = 0; j < terms1->count; j++)
            add_term(acc, f1, terms1->list[j], R, V);
    }
    if (f2 != NULL)
        for (int k = 0; k < f2->k_len; k++)
            add_term(acc, f2, k, R, V);
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++)
            vec_store(C + r * ldc + v * FR_LANES, acc[r][v]);
}

/* The factor moved down by `rows` rows of A. */
static struct fr_factor factor_rows_from(const struct fr_factor *f, int rows)
{
    struct fr_factor moved = *f;
    moved.a += rows * f->row;
    return moved;
}

/* The factor moved right by `vecs` vectors of B. */
static struct fr_factor factor_vecs_from(const struct fr_factor *f, int vecs)
{
    struct fr_factor moved = *f;
    moved.b += vecs * FR_LANES;
    return moved;
}

#define FR_TILE_CASE(R, V)                                                      \
    case (R) * 8 + (V):                                                         \
        tile(c, ldc, start, row, f1 ? &g1 : NULL, &terms, f2 ? &g2 : NULL, (R),  \
             (V));                                                              \
        break

/*
 * The terms of f that rows first .. first + R - 1 of A need (see fr_factor's
 * zeros).  A list goes to ks.
 */
static struct fr_terms needed_terms(int *ks, const struct fr_factor *f, int first,
                                    int R)
{
    struct fr_terms terms = {FR_ALL_TERMS, 0, NULL, 0};

    if (f == NULL || f->zeros == NULL)
        return terms;
    if (f->zeros_by_row) {
        terms.kind = FR_BIT_TERMS;
        for (int r = 0; r < R; r++)
            terms.bits |= f->zeros[first + r];
    } else {
        const uint64_t rows = (R == 64 ? ~(uint64_t)0 : ((uint64_t)1 << R) - 1)
                              << first;
        terms.kind = FR_LISTED_TERMS;
        terms.list = ks;
        /* Written without a branch: which samples are zero is unpredictable. */
        for (int k = 0; k < f->k_len; k++) {
            ks[terms.count] = k;
            terms.count += (f->zeros[k] & rows) != 0;
        }
    }
    return terms;
}

/*
 * C (M, Hp), rows ldc apart, = start + A1 B1 + A2 B2 (f2 may be NULL), tile by
 * tile.  start and start_row are those of tile.
 */
static void tiled_product(float *C, ptrdiff_t ldc, int M, int Hp, int start,
                          const float *start_row, const struct fr_factor *f1,
                          const struct fr_factor *f2, int *ks)
{
    /* ks: room for f1->k_len ints when f1 has zero masks, else unused */
    const int vecs = Hp / FR_LANES;

    /* The rows are dealt out evenly, so that no tile is left with a row or
     * two: 25 rows become 5 tiles of 5, not 4 of 6 and one of 1. */
    const int tiles = (M + FR_TILE_ROWS - 1) / FR_TILE_ROWS;
    const int base = tiles > 0 ? M / tiles : 0, extra = tiles > 0 ? M % tiles : 0;

    for (int t = 0, i = 0; t < tiles; t++) {
        const int R = base + (t < extra);
        const struct fr_terms terms = needed_terms(ks, f1, i, R);

        /* A tile whose only factor is all zeros leaves C as it is. */
        if (f2 == NULL && start == FR_FROM_C &&
            ((terms.kind == FR_BIT_TERMS && terms.bits == 0) ||
             (terms.kind == FR_LISTED_TERMS && terms.count == 0))) {
            i += R;
            continue;
        }
        for (int v0 = 0; v0 < vecs; v0 += FR_TILE_VECS) {
            const int V = vecs - v0 < FR_TILE_VECS ? vecs - v0 : FR_TILE_VECS;
            float *c = C + i * ldc + v0 * FR_LANES;
            const float *row = start_row ? start_row + v0 * FR_LANES : NULL;
            struct fr_factor g1, g2;
            if (f1) {
                g1 = factor_rows_from(f1, i);
                g1 = factor_vecs_from(&g1, v0);
            }
            if (f2) {
                g2 = factor_rows_from(f2, i);
                g2 = factor_vecs_from(&g2, v0);
            }
            switch (R * 8 + V) {
                FR_TILE_CASE(1, 1); FR_TILE_CASE(1, 2); FR_TILE_CASE(1, 3);
                FR_TILE_CASE(1, 4); FR_TILE_CASE(2, 1); FR_TILE_CASE(2, 2);
                FR_TILE_CASE(2, 3); FR_TILE_CASE(2, 4);
#if FR_TILE_ROWS == 6
                FR_TILE_CASE(3, 1); FR_TILE_CASE(3, 2); FR_TILE_CASE(3, 3);
                FR_TILE_CASE(3, 4); FR_TILE_CASE(4, 1); FR_TILE_CASE(4, 2);
                FR_TILE_CASE(4, 3); FR_TILE_CASE(4, 4); FR_TILE_CASE(5, 1);
                FR_TILE_CASE(5, 2); FR_TILE_CASE(5, 3); FR_TILE_CASE(5, 4);
                FR_TILE_CASE(6, 1); FR_TILE_CASE(6, 2); FR_TILE_CASE(6, 3);
                FR_TILE_CASE(6, 4);
#endif
            }
        }
        i += R;
    }
}

/* sums (Hp,) += the sum of the n rows of a (n, Hp), a vector at a time: as a
 * plain loop the compiler must assume sums may overlap a, and adds one float
 * at a time through memory. */
static void add_column_sums(float *sums, const float *a, int n, int Hp)
{
    for (int v = 0; v < Hp; v += FR_LANES) {
        fr_vec acc = vec_load(sums + v);
        for (int i = 0; i < n; i++)
            acc = vec_add(acc, vec_load(a + i * Hp + v));
        vec_store(sums + v, acc);
    }
}

/* dst (rows, Hp) = src (rows, cols), rows ld apart, zero-filled past cols. */
static void pad_columns(float *dst, int Hp, const float *src, ptrdiff_t ld, int rows,
                        int cols)
{
    for (int i = 0; i < rows; i++) {
        memcpy(dst + i * Hp, src + i * ld, (size_t)cols * sizeof(float));
        memset(dst + i * Hp + cols, 0, (size_t)(Hp - cols) * sizeof(float));
    }
}

/* dst (rows, cols) = the first cols columns of src (rows, Hp). */
static void unpad_columns(float *dst, const float *src, int Hp, int rows, int cols)
{
    for (int i = 0; i < rows; i++)
        memcpy(dst + i * cols, src + i * Hp, (size_t)cols * sizeof(float));
}

/* Scratch is carved into buffers that start on 64-byte boundaries. */
#define FR_ALIGN_FLOATS 16

static ptrdiff_t aligned_size(ptrdiff_t n)
{
    return (n + FR_ALIGN_FLOATS - 1) / FR_ALIGN_FLOATS * FR_ALIGN_FLOATS;
}

/* The next n floats at *cursor; moves the cursor past them. */
static float *carve(float **cursor, ptrdiff_t n)
{
    float *start = *cursor;
    *cursor += aligned_size(n);
    return start;
}

/* The first 64-byte boundary at or after p (p is float-aligned). */
static float *align_floats(float *p)
{
    const uintptr_t misplaced = (uintptr_t)p % (FR_ALIGN_FLOATS * sizeof(float));
    if (misplaced == 0)
        return p;
    return p + (FR_ALIGN_FLOATS * sizeof(float) - misplaced) / sizeof(float);
}

/* The Dense layer's weights in padded rows: V (H, Kp), its transpose (K, Hp)
 * for the backward pass, c (Kp,). */
struct fr_packed_dense {
    float *V, *V_T, *c;
};

static ptrdiff_t packed_dense_size(int H, int K)
{
    const int Hp = padded(H), Kp = padded(K);
    return aligned_size((ptrdiff_t)H * Kp) + aligned_size((ptrdiff_t)K * Hp) +
           aligned_size(Kp);
}

/* dst (cols, width) = src (rows, cols) transposed, zero past rows. */
static void pad_transposed(float *dst, int width, const float *src, int rows,
                           int cols)
{
    for (int j = 0; j < cols; j++) {
        float *out = dst + (ptrdiff_t)j * width;
        for (int i = 0; i < rows; i++)
            out[i] = src[(ptrdiff_t)i * cols + j];
        memset(out + rows, 0, (size_t)(width - rows) * sizeof(float));
    }
}

static struct fr_packed_dense pack_dense(float **cursor, const float *V,
                                         const float *c, int H, int K, int transpose)
{
    const int Hp = padded(H), Kp = padded(K);
    struct fr_packed_dense packed;

    packed.V = carve(cursor, (ptrdiff_t)H * Kp);
    packed.V_T = carve(cursor, (ptrdiff_t)K * Hp);
    packed.c = carve(cursor, Kp);
    pad_columns(packed.V, Kp, V, K, H, K);
    pad_columns(packed.c, Kp, c, K, 1, K);
    if (transpose)
        pad_transposed(packed.V_T, Hp, V, H, K);
    return packed;
}

/* logits (n, K) = h (n, Hp) V + c, through `wide` (n, Kp) scratch. */
static void tiled_dense_forward(float *logits, float *wide, const float *h,
                                const struct fr_packed_dense *p, int n, int H, int K)
{
    const int Hp = padded(H), Kp = padded(K);
    const struct fr_factor hidden = {h, Hp, 1, p->V, Kp, H};

    tiled_product(wide, Kp, n, Kp, FR_FROM_ROW, p->c, &hidden, NULL, NULL);
    unpad_columns(logits, wide, Kp, n, K);
}

/* The weights of the recurrence in padded rows: W (D, Hp), U (H, Hp), its
 * transpose (H, Hp) for BPTT, b (Hp,). */
struct fr_packed_rnn {
    float *W, *U, *U_T, *b;
};

static ptrdiff_t packed_rnn_size(int D, int H)
{
    const int Hp = padded(H);
    return 2 * aligned_size((ptrdiff_t)H * Hp) + aligned_size((ptrdiff_t)D * Hp) +
           aligned_size(Hp);
}

static struct fr_packed_rnn pack_rnn(float **cursor, const float *W, const float *U,
                                     const float *b, int D, int H, int transpose)
{
    const int Hp = padded(H);
    struct fr_packed_rnn packed;

    packed.W = carve(cursor, (ptrdiff_t)D * Hp);
    packed.U = carve(cursor, (ptrdiff_t)H * Hp);
    packed.U_T = carve(cursor, (ptrdiff_t)H * Hp);
    packed.b = carve(cursor, Hp);
    pad_columns(packed.W, Hp, W, H, D, H);
    pad_columns(packed.U, Hp, U, H, H, H);
    pad_columns(packed.b, Hp, b, H, 1, H);
    if (transpose)
        pad_transposed(packed.U_T, Hp, U, H, H);
    return packed;
}

/* Inputs of at most this many features get zero masks (one bit per feature). */
#define FR_MASK_FEATURES 64

/*
 * Read the inputs once: masks[t * n + i] gets bit d set where x_t (i, d) != 0,
 * and the result is 1 if every value is finite.  x holds n samples of T steps
 * of D features, samples sample_stride apart and steps step_stride apart.
 * masks (T, n) may be NULL, and must be when D > FR_MASK_FEATURES.
 *
 * Sample by sample, so that a batch-major x is read in one forward sweep, which
 * the hardware prefetcher follows best; predict relies on this pass to bring
 * each chunk into cache.  A value is not finite when its exponent bits are all
 * ones; testing the bits, unlike isfinite, vectorises.
 */
static int scan_inputs(uint64_t *masks, const float *x, ptrdiff_t sample_stride,
                       ptrdiff_t step_stride, int n, int T, int D)
{
    uint32_t bad = 0;

    for (int i = 0; i < n; i++) {
        for (int t = 0; t < T; t++) {
            const float *row = x + i * sample_stride + t * step_stride;
            uint64_t nonzero = 0;
            int d = 0;
#if defined(__AVX512F__)
            const __m512i exponent = _mm512_set1_epi32(0x7f800000);
            for (; masks != NULL && d < D; d += 16) {
                /* a masked load only for the last few features: on this
                 * hardware it streams from memory at a fraction of the rate of
                 * a plain load */
                const int left = D - d;
                const __m512 v =
                    left >= 16 ? _mm512_loadu_ps(row + d)
                               : _mm512_maskz_loadu_ps((__mmask16)((1u << left) - 1),
                                                       row + d);
                const __m512i bits = _mm512_and_si512(_mm512_castps_si512(v), exponent);
                nonzero |= (uint64_t)_mm512_cmp_ps_mask(v, _mm512_setzero_ps(),
                                                        _CMP_NEQ_UQ)
                           << d;
                bad |= _mm512_cmpeq_epi32_mask(bits, exponent);
            }
#elif defined(__AVX2__)
            const __m256i exponent = _mm256_set1_epi32(0x7f800000);
            for (; masks != NULL && d + 8 <= D; d += 8) {
                const __m256 v = _mm256_loadu_ps(row + d);
                const __m256i bits = _mm256_and_si256(_mm256_castps_si256(v), exponent);
                const __m256 zero = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_EQ_OQ);
                nonzero |= (uint64_t)(~_mm256_movemask_ps(zero) & 0xff) << d;
                bad |= _mm256_movemask_epi8(_mm256_cmpeq_epi32(bits, exponent));
            }
#endif
            for (; d < D; d++) {
                uint32_t bits;
                memcpy(&bits, &row[d], sizeof bits);
                bad |= (bits & 0x7f800000u) == 0x7f800000u;
                if (masks != NULL)
                    nonzero |= (uint64_t)(row[d] != 0.0f) << d;
            }
            if (masks != NULL)
                masks[(ptrdiff_t)t * n + i] = nonzero;
        }
    }
    return !bad;
}

/*
 * hs[t] (n, Hp) = act(x_t W + h_{t-1} U + b) for t = 0 .. T - 1, h_{-1} = 0.
 * x_t (n, D) has rows sample_stride apart and lies step_stride after x_{t-1}.
 * masks (T, n) from scan_inputs lets the input products skip features that
 * are zero in all rows of a tile, or is NULL; ks has room for D ints.
 * With `keep_all` 0 only two states are kept, hs[t % 2]; otherwise hs holds
 * all T.  Returns the last state (zero if T is 0).
 */
static float *tiled_rnn_forward(float *hs, const float *x, ptrdiff_t sample_stride,
                                ptrdiff_t step_stride, const uint64_t *masks,
                                int *ks, const struct fr_packed_rnn *p, int n,
                                int T, int D, int H, int activation, int keep_all)
{
    const int Hp = padded(H);
    const ptrdiff_t nHp = (ptrdiff_t)n * Hp;
    float *h = hs, *h_prev = NULL;

    if (T == 0)
        memset(hs, 0, (size_t)nHp * sizeof(float));
    for (int t = 0; t < T; t++) {
        const struct fr_factor input = {
            x + t * step_stride, sample_stride, 1, p->W, Hp, D,
            masks != NULL ? masks + (ptrdiff_t)t * n : NULL, 1};
        const struct fr_factor recurrent = {h_prev, Hp, 1, p->U, Hp, H};

        h = hs + (keep_all ? t : t % 2) * nHp;
        tiled_product(h, Hp, n, Hp, FR_FROM_ROW, p->b, &input,
                      t > 0 ? &recurrent : NULL, ks);
        fr_activation_forward(h, h, nHp, activation);
        h_prev = h;
    }
    return h;
}

/* --------------------------------------------------------------------------
 * SimpleRNN
 */

void fr_rnn_forward(float *hs, const float *x_tm, const float *W, const float *U,
                    const float *b, int T, int B, int D, int H, int activation,
                    fr_sgemm_fn sgemm)
{
    /* hs (T, B, H) out; x_tm (T, B, D), W (D, H), U (H, H), b (H,) */
    const ptrdiff_t step = (ptrdiff_t)B * H;

    if (T <= 0)
        return;

    /* The input projection of every step is one product, accumulated onto the
     * bias; only h U is sequential, and it accumulates onto hs[t] in place, so
     * unlike the Numba twin no scratch buffer is needed. */
    fill_rows(hs, b, (ptrdiff_t)T * B, H);
    gemm_rm(sgemm, 0, 0, T * B, H, D, x_tm, D, W, H, 1.0f, hs, H);
    fr_activation_forward(hs, hs, step, activation);

    for (int t = 1; t < T; t++) {
        float *h = hs + t * step;
        gemm_rm(sgemm, 0, 0, B, H, H, h - step, H, U, H, 1.0f, h, H);
        fr_activation_forward(h, h, step, activation);
    }
}

void fr_rnn_backward(float *dW, float *dU, float *db, float *dx_tm, float *dz,
                     const float *dh_out, const float *hs, const float *x_tm,
                     const float *W, const float *U, int T, int B, int D, int H,
                     int dh_steps, int activation, fr_sgemm_fn sgemm)
{
    /*
     * dW (D, H), dU (H, H), db (H,)  out: overwritten, not accumulated
     * dx_tm (T, B, D)                out, or NULL to skip
     * dz (T, B, H)                   out: gradient of every pre-activation
     * dh_out (dh_steps, B, H)        dh_steps = T: every step's output,
     *                                dh_steps = 1: the last step's only
     * hs (T, B, H), x_tm (T, B, D), W (D, H), U (H, H) as in the forward pass
     */
    const ptrdiff_t step = (ptrdiff_t)B * H;
    const int every_step = dh_steps == T && T > 1;

    if (T <= 0) {
        memset(dW, 0, (size_t)D * H * sizeof(float));
        memset(dU, 0, (size_t)H * H * sizeof(float));
        memset(db, 0, (size_t)H * sizeof(float));
        return;
    }

    /* BPTT: dz_{t-1} = (dz_t U^T + dh_out_{t-1}) * act'(h_{t-1}).  The product
     * writes straight into dz_{t-1}, which therefore needs no scratch. */
    fr_activation_backward(dz + (T - 1) * step, dh_out + (dh_steps - 1) * step,
                           hs + (T - 1) * step, step, activation);
    for (int t = T - 1; t > 0; t--) {
        float *dz_prev = dz + (t - 1) * step;
        float beta = 0.0f;
        if (every_step) {
            memcpy(dz_prev, dh_out + (t - 1) * step, (size_t)step * sizeof(float));
            beta = 1.0f;
        }
        gemm_rm(sgemm, 0, 1, B, H, H, dz + t * step, H, U, H, beta, dz_prev, H);
        fr_activation_backward(dz_prev, dz_prev, hs + (t - 1) * step, step,
                               activation);
    }

    /* The weight gradients are one product each over all steps. */
    gemm_rm(sgemm, 1, 0, D, H, T * B, x_tm, D, dz, H, 0.0f, dW, H);
    /* h_{t-1} pairs with dz_t; with T = 1 the sum is empty and dU = 0. */
    gemm_rm(sgemm, 1, 0, H, H, (T - 1) * B, hs, H, dz + step, H, 0.0f, dU, H);
    column_sums(db, dz, (ptrdiff_t)T * B, H);
    if (dx_tm != NULL)
        gemm_rm(sgemm, 0, 1, T * B, D, H, dz, H, W, H, 0.0f, dx_tm, D);
}

/* --------------------------------------------------------------------------
 * Dense
 */

void fr_dense_forward(float *y, const float *x, const float *V, const float *c,
                      int N, int H, int K, fr_sgemm_fn sgemm)
{
    /* y (N, K) out; x (N, H), V (H, K), c (K,) */
    fill_rows(y, c, N, K);
    gemm_rm(sgemm, 0, 0, N, K, H, x, H, V, K, 1.0f, y, K);
}

void fr_dense_backward(float *dV, float *dc, float *dx, const float *dy,
                       const float *x, const float *V, int N, int H, int K,
                       fr_sgemm_fn sgemm)
{
    /*
     * dV (H, K), dc (K,)  out: overwritten
     * dx (N, H)           out, or NULL to skip
     * dy (N, K), x (N, H), V (H, K)
     */
    gemm_rm(sgemm, 1, 0, H, K, N, x, H, dy, K, 0.0f, dV, K);
    column_sums(dc, dy, N, K);
    if (dx != NULL)
        gemm_rm(sgemm, 0, 1, N, H, K, dy, K, V, K, 0.0f, dx, H);
}

/* --------------------------------------------------------------------------
 * softmax and losses
 *
 * These rows are short (K classes) and run once per batch, so they use libm's
 * expf and logf, as the Numba twin does.
 */

/*
 * p_row (K) out = exp(z_row - max(z_row)); returns the sum and sets *max.
 * Shifting by the row maximum keeps every exp from overflowing.  p_row may be
 * z_row: every z is read before its p is written.
 */
static float shifted_exp_row(float *p_row, const float *z_row, int K, float *max)
{
    float m = K > 0 ? z_row[0] : 0.0f;
    float s = 0.0f;

    for (int k = 1; k < K; k++)
        if (z_row[k] > m)
            m = z_row[k];
    for (int k = 0; k < K; k++) {
        float e = expf(z_row[k] - m);
        p_row[k] = e;
        s += e;
    }
    *max = m;
    return s;
}

void fr_softmax_forward(float *p, const float *z, int N, int K)
{
    /* p (N, K) out, z (N, K); p may be z */
    for (int i = 0; i < N; i++) {
        float *pi = p + (ptrdiff_t)i * K;
        float m;
        const float s = shifted_exp_row(pi, z + (ptrdiff_t)i * K, K, &m);

        for (int k = 0; k < K; k++)
            pi[k] /= s;
    }
}

void fr_softmax_backward(float *dz, const float *dp, const float *p, int N, int K)
{
    /* dz (N, K) out, dp (N, K), p (N, K); dz may be dp */
    for (int i = 0; i < N; i++) {
        const float *dpi = dp + (ptrdiff_t)i * K;
        const float *pi = p + (ptrdiff_t)i * K;
        float *dzi = dz + (ptrdiff_t)i * K;
        float s = 0.0f;

        for (int k = 0; k < K; k++)
            s += dpi[k] * pi[k];
        for (int k = 0; k < K; k++)
            dzi[k] = pi[k] * (dpi[k] - s);
    }
}

double fr_softmax_xent_forward(float *p, const float *logits, const float *y, int N,
                               int K)
{
    /* p (N, K) out, logits (N, K), y (N, K) target distribution */
    double total = 0.0;

    for (int i = 0; i < N; i++) {
        const float *zi = logits + (ptrdiff_t)i * K;
        const float *yi = y + (ptrdiff_t)i * K;
        float *pi = p + (ptrdiff_t)i * K;
        float m;
        const float s = shifted_exp_row(pi, zi, K, &m);
        float log_s, row = 0.0f;

        /* log p = z - m - log s is finite even where p underflows to 0, so
         * the loss needs no clipping. */
        log_s = logf(s);
        for (int k = 0; k < K; k++) {
            pi[k] /= s;
            if (yi[k] != 0.0f)
                row -= yi[k] * (zi[k] - m - log_s);
        }
        total += row;
    }
    return N > 0 ? total / N : NAN;
}

void fr_softmax_xent_backward(float *dlogits, const float *p, const float *y, int N,
                              int K)
{
    /*
     * dlogits (N, K) out, p (N, K) from the forward pass, y (N, K).
     * The mean over rows puts 1 / N on every row; sum_k y_k is 1 for one-hot
     * targets but is kept so that unnormalised targets get the true gradient.
     */
    const float inv_n = (float)(1.0 / N);

    for (int i = 0; i < N; i++) {
        const float *pi = p + (ptrdiff_t)i * K;
        const float *yi = y + (ptrdiff_t)i * K;
        float *di = dlogits + (ptrdiff_t)i * K;
        float s = 0.0f;

        for (int k = 0; k < K; k++)
            s += yi[k];
        for (int k = 0; k < K; k++)
            di[k] = (pi[k] * s - yi[k]) * inv_n;
    }
}

int fr_sparse_to_onehot(float *y, const int64_t *labels, int N, int K)
{
    /* y (N, K) out, labels (N,); returns how many labels fall outside [0, K),
     * whose rows stay 0, so that the caller can refuse them instead of this
     * kernel writing out of bounds. */
    int bad = 0;

    memset(y, 0, (size_t)N * K * sizeof(float));
    for (int i = 0; i < N; i++) {
        if (labels[i] < 0 || labels[i] >= K) {
            bad++;
            continue;
        }
        y[(ptrdiff_t)i * K + labels[i]] = 1.0f;
    }
    return bad;
}

/* --------------------------------------------------------------------------
 * optimizers on flat parameter vectors
 *
 * The hyperparameters arrive as double and are rounded to float the way the
 * Numba twin rounds them, e.g. 1 - beta_1 is formed in double first.
 */

void fr_adam_update(float *w, const float *g, float *m, float *v, ptrdiff_t P,
                    double alpha, double beta_1, double beta_2, double epsilon)
{
    /* w, g, m, v (P,); alpha already carries the bias corrections, and epsilon
     * is added to sqrt(v), not to the corrected sqrt(v_hat) (Keras' form). */
    const float a = (float)alpha;
    const float b1 = (float)(1.0 - beta_1);
    const float b2 = (float)(1.0 - beta_2);
    const float eps = (float)epsilon;

    for (ptrdiff_t i = 0; i < P; i++) {
        float gi = g[i];
        m[i] += (gi - m[i]) * b1;
        v[i] += (gi * gi - v[i]) * b2;
        w[i] -= (m[i] * a) / (sqrtf(v[i]) + eps);
    }
}

void fr_sgd_update(float *w, const float *g, float *velocity, ptrdiff_t P,
                   double learning_rate, double momentum, int nesterov)
{
    /* w, g (P,), velocity (P,), unused (may be NULL) when momentum is 0 */
    const float lr = (float)learning_rate;
    const float mu = (float)momentum;

    if (momentum == 0.0) {
        for (ptrdiff_t i = 0; i < P; i++)
            w[i] -= lr * g[i];
        return;
    }
    for (ptrdiff_t i = 0; i < P; i++) {
        velocity[i] = mu * velocity[i] - lr * g[i];
        if (nesterov)
            w[i] += mu * velocity[i] - lr * g[i];
        else
            w[i] += velocity[i];
    }
}

void fr_rmsprop_update(float *w, const float *g, float *velocity, ptrdiff_t P,
                       double learning_rate, double rho, double epsilon)
{
    /* w, g, velocity (P,); epsilon goes inside the root, as in Keras 3 */
    const float lr = (float)learning_rate;
    const float r = (float)rho;
    const float eps = (float)epsilon;

    for (ptrdiff_t i = 0; i < P; i++) {
        float gi = g[i];
        velocity[i] = r * velocity[i] + (1.0f - r) * gi * gi;
        w[i] -= lr * gi / sqrtf(velocity[i] + eps);
    }
}

/* --------------------------------------------------------------------------
 * the whole train step of SimpleRNN -> Dense -> softmax cross-entropy
 */

static void optimizer_update(float *w, const float *g, float *state_1,
                             float *state_2, ptrdiff_t P, int optimizer,
                             const double *hyper)
{
    /* w, g, state_1, state_2 (P,); hyper as for fr_rnn_dense_xent_train_step */
    switch (optimizer) {
    case FR_ADAM:
        fr_adam_update(w, g, state_1, state_2, P, hyper[0], hyper[1], hyper[2],
                       hyper[3]);
        break;
    case FR_SGD:
        fr_sgd_update(w, g, state_1, P, hyper[0], hyper[1], hyper[2] != 0.0);
        break;
    default:
        fr_rmsprop_update(w, g, state_1, P, hyper[0], hyper[1], hyper[2]);
    }
}

/* Rows whose first maximum of p is at the first maximum of y.  p, y (N, K) */
static int count_correct(const float *p, const float *y, int N, int K)
{
    int correct = 0;

    for (int i = 0; i < N; i++) {
        const float *pi = p + (ptrdiff_t)i * K;
        const float *yi = y + (ptrdiff_t)i * K;
        int best_p = 0, best_y = 0;

        for (int k = 1; k < K; k++) {
            if (pi[k] > pi[best_p])
                best_p = k;
            if (yi[k] > yi[best_y])
                best_y = k;
        }
        correct += best_p == best_y;
    }
    return correct;
}

/* Threads for a loop of `tasks` independent iterations, at least 1. */
static int team_size(int tasks)
{
    const int threads = fr_max_threads();

    if (tasks < 1)
        return 1;
    return threads < tasks ? threads : tasks;
}

/*
 * One part of the batch: rows first .. first + n - 1 run forward, loss and
 * backward on their own, into their own scratch row and gradient row.  Every
 * product is a tiled one on padded rows: at these sizes a BLAS call costs
 * more in overhead and packing than the product.
 */
static int train_part(double *loss, int *correct, float *row, float *g,
                      const float *x, ptrdiff_t sample_stride, ptrdiff_t step_stride,
                      const float *y, const float *W, const float *U, const float *b,
                      const float *V, const float *c, int first, int n, int T, int B,
                      int D, int H, int K, int activation)
{
    /*
     * row  scratch, as fr_train_scratch_size lays it out
     * g    gradients of W (D, H), U (H, H), b (H,), V (H, K), c (K,), flattened
     * x (B, T, D) with sample_stride and step_stride elements between samples and
     * between steps, features contiguous;  y (B, K)
     *
     * Returns 0, having computed nothing, if the part's inputs are not all finite.
     */
    const int Hp = padded(H), Kp = padded(K);
    const ptrdiff_t nHp = (ptrdiff_t)n * Hp;
    float *cursor = align_floats(row);
    const struct fr_packed_rnn p = pack_rnn(&cursor, W, U, b, D, H, 1);
    const struct fr_packed_dense dense = pack_dense(&cursor, V, c, H, K, 1);
    /* rows of Kp: the logits, then dlogits, of the part; gV */
    float *wide = carve(&cursor, (ptrdiff_t)n * Kp);
    float *gV_wide = carve(&cursor, (ptrdiff_t)H * Kp);
    float *hs = carve(&cursor, T * nHp);
    float *dz = carve(&cursor, nHp);
    float *dz_prev = carve(&cursor, nHp);
    float *dW = carve(&cursor, (ptrdiff_t)D * Hp);
    float *dU = carve(&cursor, (ptrdiff_t)H * Hp);
    float *db = carve(&cursor, Hp);
    float *logits = carve(&cursor, (ptrdiff_t)n * K);
    float *probs = carve(&cursor, (ptrdiff_t)n * K);
    float *dlogits = carve(&cursor, (ptrdiff_t)n * K);
    /* uint64_t and int fit in the float-aligned scratch: carve starts every
     * buffer on a 64-byte boundary */
    uint64_t *masks = D <= FR_MASK_FEATURES
                          ? (uint64_t *)carve(&cursor, 2 * (ptrdiff_t)T * n)
                          : NULL;
    int *ks = (int *)carve(&cursor, n > D ? n : D);
    float *gW = g;
    float *gU = gW + (ptrdiff_t)D * H;
    float *gb = gU + (ptrdiff_t)H * H;
    float *gV = gb + H;
    float *gc = gV + (ptrdiff_t)H * K;
    const float *y_part = y + (ptrdiff_t)first * K;
    const float share = (float)((double)n / B);
    const float *h_last;

    x += first * sample_stride;
    if (!scan_inputs(masks, x, sample_stride, step_stride, n, T, D))
        return 0;

    /* forward */
    h_last = tiled_rnn_forward(hs, x, sample_stride, step_stride, masks, ks, &p, n,
                               T, D, H, activation, 1);
    tiled_dense_forward(logits, wide, h_last, &dense, n, H, K);

    /* loss, fused with the softmax; the part's mean is weighted by its share of
     * the batch, so that the parts' gradients sum to that of the batch mean */
    *loss = fr_softmax_xent_forward(probs, logits, y_part, n, K) * n;
    *correct = count_correct(probs, y_part, n, K);
    fr_softmax_xent_backward(dlogits, probs, y_part, n, K);
    for (ptrdiff_t i = 0; i < (ptrdiff_t)n * K; i++)
        dlogits[i] *= share;

    /* Dense backward, from dlogits padded to (n, Kp) in wide: gV = h_last^T
     * dlogits, then dh_last = dlogits V^T into dz, whose padding stays zero as
     * that of V^T is */
    column_sums(gc, dlogits, n, K);
    pad_columns(wide, Kp, dlogits, K, n, K);
    {
        const struct fr_factor h_T = {h_last, 1, Hp, wide, Kp, n};
        const struct fr_factor back = {wide, Kp, 1, dense.V_T, Hp, K};

        tiled_product(gV_wide, Kp, H, Kp, FR_FROM_ZERO, NULL, &h_T, NULL, NULL);
        unpad_columns(gV, gV_wide, Kp, H, K);
        tiled_product(dz, Hp, n, Hp, FR_FROM_ZERO, NULL, &back, NULL, NULL);
    }
    fr_activation_backward(dz, dz, h_last, nHp, activation);

    /* BPTT, gathering each step's share of dW, dU and db while its dz is in
     * cache: dz_{t-1} = (dz_t U^T) * act'(h_{t-1}), with h_{t-1} pairing with
     * dz_t in dU */
    memset(dW, 0, (size_t)D * Hp * sizeof(float));
    memset(dU, 0, (size_t)H * Hp * sizeof(float));
    memset(db, 0, (size_t)Hp * sizeof(float));
    for (int t = T - 1; t >= 0; t--) {
        const float *h_prev = hs + (t - 1) * nHp;
        const struct fr_factor x_T = {
            x + t * step_stride, 1, sample_stride, dz, Hp, n,
            masks != NULL ? masks + (ptrdiff_t)t * n : NULL, 0};
        const struct fr_factor h_T = {h_prev, 1, Hp, dz, Hp, n};
        const struct fr_factor back = {dz, Hp, 1, p.U_T, Hp, H};
        float *swap;

        add_column_sums(db, dz, n, Hp);
        tiled_product(dW, Hp, D, Hp, FR_FROM_C, NULL, &x_T, NULL, ks);
        if (t == 0)
            break;
        tiled_product(dU, Hp, H, Hp, FR_FROM_C, NULL, &h_T, NULL, ks);
        tiled_product(dz_prev, Hp, n, Hp, FR_FROM_ZERO, NULL, &back, NULL, ks);
        fr_activation_backward(dz_prev, dz_prev, h_prev, nHp, activation);
        swap = dz;
        dz = dz_prev;
        dz_prev = swap;
    }
    unpad_columns(gW, dW, Hp, D, H);
    unpad_columns(gU, dU, Hp, H, H);
    unpad_columns(gb, db, Hp, 1, H);
    return 1;
}

ptrdiff_t fr_train_scratch_size(int T, int rows, int D, int H, int K)
{
    /* elements of one scratch row of fr_rnn_dense_xent_train_step: the
     * buffers train_part carves, each rounded up, and room to align the first */
    const ptrdiff_t n = rows, Hp = padded(H);
    const ptrdiff_t Kp = padded(K);
    return FR_ALIGN_FLOATS + packed_rnn_size(D, H) + packed_dense_size(H, K) +
           aligned_size(n * Kp) + aligned_size(H * Kp) + aligned_size(T * n * Hp) +
           2 * aligned_size(n * Hp) + aligned_size(D * Hp) + aligned_size(H * Hp) +
           aligned_size(Hp) + 3 * aligned_size(n * K) +
           (D <= FR_MASK_FEATURES ? aligned_size(2 * T * n) : 0) +
           aligned_size(n > D ? n : D);
}

double fr_rnn_dense_xent_train_step(
    int *correct, int *inputs_finite, float *params, float *grads, float *state_1,
    float *state_2, float *scratch, float *part_grads, double *part_loss,
    int *part_correct, const float *x, ptrdiff_t sample_stride,
    ptrdiff_t step_stride, const float *y, const int64_t *bounds, const float *W,
    const float *U, const float *b, const float *V, const float *c, float *dW,
    float *dU, float *db, float *dV, float *dc, ptrdiff_t P, ptrdiff_t scratch_row,
    int parts, int T, int B, int D, int H, int K, int activation, int optimizer,
    const double *hyper, int threads)
{
    /*
     * correct             out: rows predicted right
     * inputs_finite       out: 0 if x holds a value that is not finite, which
     *                     leaves params, grads and the optimizer state untouched
     * params, grads (P,)  flat weights and gradients; W (D, H), U (H, H), b (H,),
     *                     V (H, K), c (K,) are views of params, dW, dU, db, dV,
     *                     dc of grads (or of other memory for an absent bias)
     * state_1, state_2 (P,)  optimizer state (state_2 unused but by Adam)
     * scratch (parts, scratch_row)  one row per part, scratch_row at least
     *                     fr_train_scratch_size(T, largest part, D, H, K)
     * part_grads (parts, G)  each part's gradients of W, U, b, V, c, flattened
     *                     in that order, G = D H + H H + H + H K + K
     * part_loss, part_correct (parts,)  scratch
     * x (B, T, D)         inputs: sample_stride and step_stride elements between
     *                     samples and between steps, features contiguous
     * y (B, K)            targets
     * bounds (parts + 1,) part s holds batch rows bounds[s] to bounds[s + 1]
     * hyper  Adam (alpha_t, beta_1, beta_2, epsilon), SGD (learning_rate,
     *        momentum, nesterov), RMSprop (learning_rate, rho, epsilon)
     *
     * Returns the mean loss.  A loss that is not finite leaves params, grads and
     * the optimizer state untouched.
     */
    const ptrdiff_t G = (ptrdiff_t)D * H + (ptrdiff_t)H * H + H + (ptrdiff_t)H * K + K;
    double loss = 0.0;
    float *total = part_grads;
    int finite = 1;

    /* The caller chooses the thread count (1 runs the parts one after the
     * other, with the same arithmetic), capped by the parts and the cores. */
    threads = threads < team_size(parts) ? threads : team_size(parts);
    threads = threads > 1 ? threads : 1;

    /* Each part runs on its own thread, with BLAS on one thread inside it: the
     * products of a few dozen rows are too small for BLAS to split well. */
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1) \
    reduction(&& : finite)
    for (int part = 0; part < parts; part++) {
        const int first = (int)bounds[part];
        const int n = (int)(bounds[part + 1] - bounds[part]);
        finite = train_part(&part_loss[part], &part_correct[part],
                            scratch + part * scratch_row, part_grads + part * G, x,
                            sample_stride, step_stride, y, W, U, b, V, c, first, n, T,
                            B, D, H, K, activation) &&
                 finite;
    }

    /* Summed in part order, so that the result does not depend on the threads. */
    *correct = 0;
    *inputs_finite = finite;
    if (!finite)
        return NAN;
    for (int part = 0; part < parts; part++) {
        loss += part_loss[part];
        *correct += part_correct[part];
    }
    loss /= B;
    if (!isfinite(loss))
        return loss;

    /* The gradient of the batch mean is the sum of the parts' weighted gradients,
     * gathered in the first part's row and scattered to dW, dU, db, dV, dc. */
    for (int part = 1; part < parts; part++) {
        const float *g = part_grads + part * G;
        for (ptrdiff_t i = 0; i < G; i++)
            total[i] += g[i];
    }
    memcpy(dW, total, (size_t)D * H * sizeof(float));
    total += (ptrdiff_t)D * H;
    memcpy(dU, total, (size_t)H * H * sizeof(float));
    total += (ptrdiff_t)H * H;
    memcpy(db, total, (size_t)H * sizeof(float));
    total += H;
    memcpy(dV, total, (size_t)H * K * sizeof(float));
    total += (ptrdiff_t)H * K;
    memcpy(dc, total, (size_t)K * sizeof(float));

    /* update */
    optimizer_update(params, grads, state_1, state_2, P, optimizer, hyper);
    return loss;
}

/* --------------------------------------------------------------------------
 * inference of SimpleRNN -> Dense on many samples
 */

/* logits of n samples; returns 1 if their inputs are all finite. */
static int predict_chunk(float *logits, float *h, uint64_t *masks, int *ks,
                         float *wide, const float *x, const struct fr_packed_rnn *p,
                         const struct fr_packed_dense *dense,
                         ptrdiff_t sample_stride, ptrdiff_t step_stride, int n, int T,
                         int D, int H, int K, int activation)
{
    /*
     * logits (n, K) out;  h (2, n, Hp), masks (T, n) (NULL if D is over
     * FR_MASK_FEATURES), ks (D,), wide (n, Kp) scratch
     * x (n, T, D) with sample_stride and step_stride elements between samples and
     * between steps, features contiguous
     */
    const float *h_last;
    int finite;

    /* Only two hidden states are kept, so memory does not grow with T; each
     * step's input rows are read where they lie, without a transposed copy. */
    finite = scan_inputs(masks, x, sample_stride, step_stride, n, T, D);
    h_last = tiled_rnn_forward(h, x, sample_stride, step_stride, masks, ks, p, n, T,
                               D, H, activation, 0);
    tiled_dense_forward(logits, wide, h_last, dense, n, H, K);
    return finite;
}

/*
 * The chunks of predict and evaluate, spread over the threads.  With y NULL
 * the logits of every sample go to logits (B, K); otherwise logits is unused
 * and chunk k's summed softmax cross-entropy against y (B, K) and its count of
 * correct rows go to chunk_loss[k] and chunk_correct[k].  Arguments and
 * result as for fr_rnn_dense_predict.
 */
static int run_chunks(float *logits, double *chunk_loss, int *chunk_correct,
                      const float *y, const float *x, const float *W,
                      const float *U, const float *b, const float *V, const float *c,
                      ptrdiff_t sample_stride, ptrdiff_t step_stride, int B, int T,
                      int D, int H, int K, int chunk, int activation)
{
    const int chunks = B > 0 ? (B - 1) / chunk + 1 : 0;
    const int threads = team_size(chunks);
    const ptrdiff_t states = 2 * aligned_size((ptrdiff_t)chunk * padded(H));
    /* per thread, after the states: the chunk's zero masks (2 floats each),
     * the term list of a tile, and for evaluate the chunk's logits and
     * probabilities */
    const ptrdiff_t mask_floats =
        D <= FR_MASK_FEATURES ? aligned_size(2 * (ptrdiff_t)T * chunk) : 0;
    const ptrdiff_t list_floats = aligned_size(D);
    const ptrdiff_t wide_floats = aligned_size((ptrdiff_t)chunk * padded(K));
    const ptrdiff_t row_floats = y != NULL ? aligned_size((ptrdiff_t)chunk * K) : 0;
    const ptrdiff_t own =
        states + mask_floats + list_floats + wide_floats + 2 * row_floats;
    float *shared = malloc(
        (size_t)(FR_ALIGN_FLOATS + packed_rnn_size(D, H) + packed_dense_size(H, K)) *
        sizeof(float));
    struct fr_packed_rnn packed;
    struct fr_packed_dense dense;
    float *cursor = align_floats(shared);
    int finite = 1, failed = shared == NULL;

    if (failed)
        return -1;
    packed = pack_rnn(&cursor, W, U, b, D, H, 0);
    dense = pack_dense(&cursor, V, c, H, K, 0);

#pragma omp parallel num_threads(threads) if (threads > 1) \
    reduction(&& : finite) reduction(|| : failed)
    {
        float *mine = malloc((size_t)(FR_ALIGN_FLOATS + own) * sizeof(float));
        float *h = mine == NULL ? NULL : align_floats(mine);
        uint64_t *masks = h != NULL && mask_floats ? (uint64_t *)(h + states) : NULL;
        int *ks = h != NULL ? (int *)(h + states + mask_floats) : NULL;
        float *wide = h != NULL ? h + states + mask_floats + list_floats : NULL;
        float *rows = h != NULL ? wide + wide_floats : NULL;

        failed = h == NULL;
#pragma omp for schedule(dynamic)
        for (int k = 0; k < chunks; k++) {
            const int start = k * chunk;
            const int n = B - start < chunk ? B - start : chunk;
            float *out = y != NULL ? rows : logits + (ptrdiff_t)start * K;

            if (h == NULL)
                continue;
            finite = predict_chunk(out, h, masks, ks, wide, x + start * sample_stride,
                                   &packed, &dense, sample_stride, step_stride, n, T,
                                   D, H, K, activation) &&
                     finite;
            if (y != NULL) {
                /* as the train step scores its parts */
                const float *y_chunk = y + (ptrdiff_t)start * K;
                float *probs = rows + row_floats;
                chunk_loss[k] = fr_softmax_xent_forward(probs, out, y_chunk, n, K) * n;
                chunk_correct[k] = count_correct(probs, y_chunk, n, K);
            }
        }
        free(mine);
    }
    free(shared);
    if (failed)
        return -1;
    return finite;
}

int fr_rnn_dense_predict(float *logits, const float *x, const float *W,
                         const float *U, const float *b, const float *V,
                         const float *c, ptrdiff_t sample_stride,
                         ptrdiff_t step_stride, int B, int T, int D, int H, int K,
                         int chunk, int activation)
{
    /*
     * logits (B, K) out
     * x (B, T, D) float32: sample_stride and step_stride elements between
     *   samples and between steps (at least D and non-negative), features
     *   contiguous; a batch-major array and a time-major one both fit
     * W (D, H), U (H, H), b (H,), V (H, K), c (K,)
     * chunk  rows per chunk; the chunks are spread over the threads
     *
     * Returns 1 if every input value is finite, 0 if not (the logits are then
     * computed all the same), -1 if scratch memory could not be allocated.
     */
    return run_chunks(logits, NULL, NULL, NULL, x, W, U, b, V, c, sample_stride,
                      step_stride, B, T, D, H, K, chunk, activation);
}

int fr_rnn_dense_xent_evaluate(double *loss_sum, int *correct, const float *x,
                               const float *y, const float *W, const float *U,
                               const float *b, const float *V, const float *c,
                               ptrdiff_t sample_stride, ptrdiff_t step_stride, int B,
                               int T, int D, int H, int K, int chunk, int activation)
{
    /*
     * loss_sum  out: the sum over samples of the softmax cross-entropy of the
     *           logits against y (the mean is loss_sum / B)
     * correct   out: samples whose first largest logit is at y's first maximum
     * y (B, K)  target distributions;  the rest as for fr_rnn_dense_predict
     *
     * Chunk results are summed in chunk order, so they do not depend on the
     * threads.  Returns as fr_rnn_dense_predict.
     */
    const int chunks = B > 0 ? (B - 1) / chunk + 1 : 0;
    double *chunk_loss = malloc((size_t)(chunks > 0 ? chunks : 1) * sizeof(double));
    int *chunk_correct = malloc((size_t)(chunks > 0 ? chunks : 1) * sizeof(int));
    int result = -1;

    *loss_sum = 0.0;
    *correct = 0;
    if (chunk_loss != NULL && chunk_correct != NULL) {
        result = run_chunks(NULL, chunk_loss, chunk_correct, y, x, W, U, b, V, c,
                            sample_stride, step_stride, B, T, D, H, K, chunk,
                            activation);
        for (int k = 0; result >= 0 && k < chunks; k++) {
            *loss_sum += chunk_loss[k];
            *correct += chunk_correct[k];
        }
    }
    free(chunk_loss);
    free(chunk_correct);
    return result;
}

int fr_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
