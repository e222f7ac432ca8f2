/*
 * C kernels of fastrnn: SimpleRNN, Dense, softmax cross-entropy, optimizers.
 *
 * They mirror fastrnn/backends/numba_kernels.py, which states the recurrence
 * and the conventions: float32 C-contiguous arrays, results written into the
 * arrays given, outputs first, then inputs and saved state, then sizes and
 * flags.  Sequences are time-major, (T, B, .), except the inputs of the fused
 * train step and of predict, which are read where they lie (batch-major, as
 * the user holds them) and checked for finiteness there.  Nothing else here
 * validates; the Cython wrapper checks shapes before calling in.
 *
 * Shape letters: B batch, T time steps, D input features, H hidden units,
 * K output units, N rows of a 2-D product, P parameters, M elements.
 *
 * The per-layer kernels send their matrix products to a Fortran BLAS sgemm
 * handed in by the caller (SciPy's Cython BLAS), so this file links against no
 * BLAS of its own.  The fused train step, predict and evaluate instead run
 * every product on register tiles of their own (see fastrnn_kernels.c): at the
 * MNIST shapes (B=50, T=28, D=28, H=50) OpenBLAS spends as long packing each
 * step's small operands as multiplying them.
 */

#ifndef FASTRNN_KERNELS_H
#define FASTRNN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

enum fr_activation {
    FR_LINEAR = 0,
    FR_TANH = 1,
    FR_RELU = 2,
    FR_SIGMOID = 3
};

enum fr_optimizer {
    FR_ADAM = 0,
    FR_SGD = 1,
    FR_RMSPROP = 2
};

/* Column-major sgemm with the reference BLAS argument list. */
typedef void (*fr_sgemm_fn)(char *transa, char *transb, int *m, int *n, int *k,
                            float *alpha, float *a, int *lda, float *b, int *ldb,
                            float *beta, float *c, int *ldc);

/* element-wise activations; out may be z, dz may be dout */
void fr_activation_forward(float *out, const float *z, ptrdiff_t M, int activation);
void fr_activation_backward(float *dz, const float *dout, const float *out,
                            ptrdiff_t M, int activation);

/* SimpleRNN */
void fr_rnn_forward(float *hs, const float *x_tm, const float *W, const float *U,
                    const float *b, int T, int B, int D, int H, int activation,
                    fr_sgemm_fn sgemm);
void fr_rnn_backward(float *dW, float *dU, float *db, float *dx_tm, float *dz,
                     const float *dh_out, const float *hs, const float *x_tm,
                     const float *W, const float *U, int T, int B, int D, int H,
                     int dh_steps, int activation, fr_sgemm_fn sgemm);

/* Dense */
void fr_dense_forward(float *y, const float *x, const float *V, const float *c,
                      int N, int H, int K, fr_sgemm_fn sgemm);
void fr_dense_backward(float *dV, float *dc, float *dx, const float *dy,
                       const float *x, const float *V, int N, int H, int K,
                       fr_sgemm_fn sgemm);

/* softmax and losses; p may be z, dz may be dp */
void fr_softmax_forward(float *p, const float *z, int N, int K);
void fr_softmax_backward(float *dz, const float *dp, const float *p, int N, int K);
double fr_softmax_xent_forward(float *p, const float *logits, const float *y, int N,
                               int K);
void fr_softmax_xent_backward(float *dlogits, const float *p, const float *y, int N,
                              int K);
int fr_sparse_to_onehot(float *y, const int64_t *labels, int N, int K);

/* optimizers on flat parameter vectors */
void fr_adam_update(float *w, const float *g, float *m, float *v, ptrdiff_t P,
                    double alpha, double beta_1, double beta_2, double epsilon);
void fr_sgd_update(float *w, const float *g, float *velocity, ptrdiff_t P,
                   double learning_rate, double momentum, int nesterov);
void fr_rmsprop_update(float *w, const float *g, float *velocity, ptrdiff_t P,
                       double learning_rate, double rho, double epsilon);

/* the whole train step of SimpleRNN -> Dense -> softmax cross-entropy */
ptrdiff_t fr_train_scratch_size(int T, int rows, int D, int H, int K);
double fr_rnn_dense_xent_train_step(
    int *correct, int *inputs_finite, float *params, float *grads, float *state_1,
    float *state_2, float *scratch, float *part_grads, double *part_loss,
    int *part_correct, const float *x, ptrdiff_t sample_stride,
    ptrdiff_t step_stride, const float *y, const int64_t *bounds, const float *W,
    const float *U, const float *b, const float *V, const float *c, float *dW,
    float *dU, float *db, float *dV, float *dc, ptrdiff_t P, ptrdiff_t scratch_row,
    int parts, int T, int B, int D, int H, int K, int activation, int optimizer,
    const double *hyper, int threads);

/* inference of SimpleRNN -> Dense on many samples */
int fr_rnn_dense_predict(float *logits, const float *x, const float *W,
                         const float *U, const float *b, const float *V,
                         const float *c, ptrdiff_t sample_stride,
                         ptrdiff_t step_stride, int B, int T, int D, int H, int K,
                         int chunk, int activation);

/* loss summed over samples and count of correct samples of SimpleRNN -> Dense
 * -> softmax cross-entropy, without keeping the logits */
int fr_rnn_dense_xent_evaluate(double *loss_sum, int *correct, const float *x,
                               const float *y, const float *W, const float *U,
                               const float *b, const float *V, const float *c,
                               ptrdiff_t sample_stride, ptrdiff_t step_stride, int B,
                               int T, int D, int H, int K, int chunk, int activation);

/* threads the parallel kernels may use: 1 when built without OpenMP */
int fr_max_threads(void);

#endif /* FASTRNN_KERNELS_H */
