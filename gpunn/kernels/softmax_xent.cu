// Softmax cross-entropy, forward and backward in one kernel: one thread block per row.
//
// Repeats gpunn.math.losses.softmax_cross_entropy_forward followed by
// gpunn.math.losses.softmax_cross_entropy_backward (the Python reference is
// gpunn.kernels.softmax_xent.softmax_cross_entropy_reference).
//
// For logits z (N, C), integer labels y (N,) and n = max(N, 1), row r:
//   m_r     = max_c z_rc                         shift: every exponent is <= 0, exp cannot overflow
//   s_r     = sum_c exp(z_rc - m_r)              >= 1 (the maximum contributes exp(0) = 1)
//   loss_r  = (log(s_r) - (z_r,y - m_r)) / n     = (logsumexp(z_r) - z_r,y) / n
//   dz_rc   = (exp(z_rc - m_r) / s_r - [c == y]) / n  = (softmax(z_r)_c - onehot(y)_c) / n
// The caller sums loss_r over the rows to get the batch loss (a second, tiny launch).
//
// The block makes three passes over its row (max, sum, write); the row stays in L1/L2 between
// them. A label outside [0, C) gives loss_r = NaN, so the mistake shows in the loss, and that
// row's dz has no one-hot term: dz_rc = softmax(z_r)_c / n (the reference does the same).
// dz may be the same array as z. Thread t owns the classes c = t, t + blockDim.x, ...: it reads
// a class it does not own only in pass 1 (z_0) and for the label's logit, both before the
// barriers of the sum reduction, which every write of dz follows; pass 3 reads z_c again after
// them, but each thread reads and then writes only its own classes, so no thread reads a class
// that another has already overwritten.
//
// blockDim.x must be a multiple of 32 (whole warps: the shuffles use a full mask).

#define GPUNN_WARP 32

__device__ __forceinline__ float gpunn_exp(float x) { return expf(x); }
__device__ __forceinline__ double gpunn_exp(double x) { return exp(x); }
__device__ __forceinline__ float gpunn_log(float x) { return logf(x); }
__device__ __forceinline__ double gpunn_log(double x) { return log(x); }
__device__ __forceinline__ float gpunn_nan(float) { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ double gpunn_nan(double) {
    return __longlong_as_double(0x7ff8000000000000LL);
}

// max that propagates NaN from either side, like numpy's max
struct GpunnMax {
    template <typename T>
    __device__ __forceinline__ T operator()(T a, T b) const { return (a > b || a != a) ? a : b; }
};

struct GpunnSum {
    template <typename T>
    __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};

// Combine v over the whole block; every thread returns the result. buf: GPUNN_WARP shared slots.
template <typename T, typename Op>
__device__ T gpunn_block_reduce(T v, Op op, T* buf) {
    const int lane = threadIdx.x % GPUNN_WARP;
    const int warp = threadIdx.x / GPUNN_WARP;
    const int n_warps = blockDim.x / GPUNN_WARP;
    // within each warp: after the tree of shuffles lane 0 holds the warp's result
    for (int offset = GPUNN_WARP / 2; offset > 0; offset /= 2) {
        v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
    }
    __syncthreads();  // buf may still be read by the previous reduction
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    if (threadIdx.x == 0) {  // at most 32 partial results: a short serial loop
        T r = buf[0];
        for (int w = 1; w < n_warps; ++w) r = op(r, buf[w]);
        buf[0] = r;
    }
    __syncthreads();
    return buf[0];
}

template <typename T>
__device__ void gpunn_softmax_xent_rows(const T* z, const long long* y, T* dz, T* row_loss,
                                        long long n_rows, int C, T n, T* buf) {
    for (long long r = blockIdx.x; r < n_rows; r += gridDim.x) {
        const T* zr = z + r * C;  // (C,)
        T* dzr = dz + r * C;      // (C,)

        // pass 1: m = max_c z_c (every thread starts from z_0, so idle threads are harmless)
        T m = zr[0];
        for (int c = threadIdx.x; c < C; c += blockDim.x) m = GpunnMax()(m, zr[c]);
        m = gpunn_block_reduce(m, GpunnMax(), buf);

        // the label's logit, read before any thread writes dz (which may alias z)
        const long long label = y[r];
        const bool valid = label >= 0 && label < C;
        const T z_label = valid ? zr[label] : gpunn_nan(m);

        // pass 2: s = sum_c exp(z_c - m)
        T s = 0;
        for (int c = threadIdx.x; c < C; c += blockDim.x) s += gpunn_exp(zr[c] - m);
        s = gpunn_block_reduce(s, GpunnSum(), buf);

        if (threadIdx.x == 0) row_loss[r] = (gpunn_log(s) - (z_label - m)) / n;

        // pass 3: dz_c = (softmax_c - [c == y]) / n
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            T p = gpunn_exp(zr[c] - m) / s;
            if (c == label) p -= (T)1;
            dzr[c] = p / n;
        }
    }
}

extern "C" __global__ void gpunn_softmax_xent_float32(const float* z, const long long* y,
                                                      float* dz, float* row_loss,
                                                      long long n_rows, int C, float n) {
    __shared__ float buf[GPUNN_WARP];
    gpunn_softmax_xent_rows<float>(z, y, dz, row_loss, n_rows, C, n, buf);
}

extern "C" __global__ void gpunn_softmax_xent_float64(const double* z, const long long* y,
                                                      double* dz, double* row_loss,
                                                      long long n_rows, int C, double n) {
    __shared__ double buf[GPUNN_WARP];
    gpunn_softmax_xent_rows<double>(z, y, dz, row_loss, n_rows, C, n, buf);
}
