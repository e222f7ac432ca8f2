# Declarations of the C kernels in csrc/fastrnn_kernels.h, for
# fastrnn/backends/cython_kernels.pyx.

from libc.stdint cimport int64_t


cdef extern from "fastrnn_kernels.h" nogil:
    ctypedef void (*fr_sgemm_fn)(
        char *transa, char *transb, int *m, int *n, int *k, float *alpha, float *a,
        int *lda, float *b, int *ldb, float *beta, float *c, int *ldc
    ) noexcept nogil

    void fr_activation_forward(float *out, const float *z, Py_ssize_t M, int activation)
    void fr_activation_backward(
        float *dz, const float *dout, const float *out, Py_ssize_t M, int activation
    )

    void fr_rnn_forward(
        float *hs, const float *x_tm, const float *W, const float *U, const float *b,
        int T, int B, int D, int H, int activation, fr_sgemm_fn sgemm
    )
    void fr_rnn_backward(
        float *dW, float *dU, float *db, float *dx_tm, float *dz,
        const float *dh_out, const float *hs, const float *x_tm, const float *W,
        const float *U, int T, int B, int D, int H, int dh_steps, int activation,
        fr_sgemm_fn sgemm
    )

    void fr_dense_forward(
        float *y, const float *x, const float *V, const float *c, int N, int H, int K,
        fr_sgemm_fn sgemm
    )
    void fr_dense_backward(
        float *dV, float *dc, float *dx, const float *dy, const float *x,
        const float *V, int N, int H, int K, fr_sgemm_fn sgemm
    )

    void fr_softmax_forward(float *p, const float *z, int N, int K)
    void fr_softmax_backward(float *dz, const float *dp, const float *p, int N, int K)
    double fr_softmax_xent_forward(
        float *p, const float *logits, const float *y, int N, int K
    )
    void fr_softmax_xent_backward(
        float *dlogits, const float *p, const float *y, int N, int K
    )
    int fr_sparse_to_onehot(float *y, const int64_t *labels, int N, int K)

    void fr_adam_update(
        float *w, const float *g, float *m, float *v, Py_ssize_t P, double alpha,
        double beta_1, double beta_2, double epsilon
    )
    void fr_sgd_update(
        float *w, const float *g, float *velocity, Py_ssize_t P,
        double learning_rate, double momentum, int nesterov
    )
    void fr_rmsprop_update(
        float *w, const float *g, float *velocity, Py_ssize_t P,
        double learning_rate, double rho, double epsilon
    )

    Py_ssize_t fr_train_scratch_size(int T, int rows, int D, int H, int K)
    double fr_rnn_dense_xent_train_step(
        int *correct, int *inputs_finite, float *params, float *grads,
        float *state_1, float *state_2, float *scratch, float *part_grads,
        double *part_loss, int *part_correct, const float *x,
        Py_ssize_t sample_stride, Py_ssize_t step_stride, const float *y,
        const int64_t *bounds, const float *W, const float *U, const float *b,
        const float *V, const float *c, float *dW, float *dU, float *db,
        float *dV, float *dc, Py_ssize_t P,
        Py_ssize_t scratch_row, int parts, int T, int B, int D, int H, int K,
        int activation, int optimizer, const double *hyper, int threads
    )

    int fr_rnn_dense_predict(
        float *logits, const float *x, const float *W, const float *U,
        const float *b, const float *V, const float *c, Py_ssize_t sample_stride,
        Py_ssize_t step_stride, int B, int T, int D, int H, int K, int chunk,
        int activation
    )

    int fr_rnn_dense_xent_evaluate(
        double *loss_sum, int *correct, const float *x, const float *y,
        const float *W, const float *U, const float *b, const float *V,
        const float *c, Py_ssize_t sample_stride, Py_ssize_t step_stride, int B,
        int T, int D, int H, int K, int chunk, int activation
    )

    int fr_max_threads()
