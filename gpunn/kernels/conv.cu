// col2im and max-pool backward, each in one launch: one thread per input pixel, gathering.
//
// Repeats gpunn.math.conv.col2im and gpunn.math.pool.max_pool2d_backward (the Python wrappers
// and their references are in gpunn/kernels/conv.py). Both references loop over the kh x kw
// cells of a window, one strided elementwise pass per cell over the whole image gradient, in
// the order (i, j) = (0, 0), (0, 1), ...; here thread t owns input pixel (n, c, h, w) and adds,
// in that same order, every term the references would add onto it. So no two threads write one
// pixel (no atomics), and each pixel's sum is rounded in the references' order: the results
// are the references' bit for bit (up to the sign of a zero and -ftz=true's flush).
//
// Cell (i, j) of window (ho, wo) covers pixel (ho*sh + i - ph, wo*sw + j - pw). For a pixel
// (h, w) and a cell (i, j) the window is therefore ho = (h + ph - i) / sh, when that division
// is exact and 0 <= ho < Ho (and likewise wo); pooling has no padding (ph = pw = 0).
//
// Arrays are passed as a base pointer and per-axis strides in elements, so any view works (the
// layers store activations batch-innermost, and the fused conv + pool hands max-pool backward
// a transposed block view). The thread index t runs over the pixels in the memory order of dx,
// given as axis numbers from outermost to innermost (o0..o3, a permutation of 0..3 =
// n, c, h, w), so that neighbouring threads write neighbouring addresses. A grid-stride loop
// covers more pixels than threads.

// Axis extents and their iteration order, and the (n, c, h, w) of linear index t in that order.
struct GpunnOrder {
    long long ext[4];  // N, C, H, W
    int axis[4];       // outermost .. innermost
};

__device__ __forceinline__ void gpunn_unravel(long long t, const GpunnOrder& o, long long idx[4]) {
    for (int level = 3; level >= 0; --level) {
        const int a = o.axis[level];
        idx[a] = t % o.ext[a];
        t /= o.ext[a];
    }
}

// The window along one axis whose cell `cell` covers position p (padding already added):
// returns -1 when none does (the division is not exact, or the window is out of range). In
// 32-bit ints, since one image axis is far shorter than 2^31: a 64-bit division is a long
// instruction sequence on a GPU, and this runs kh (or kw) times per pixel.
__device__ __forceinline__ int gpunn_window(int p, int cell, int stride, int n_out) {
    const int d = p - cell;
    if (d < 0 || d % stride != 0) return -1;
    const int q = d / stride;
    return q < n_out ? q : -1;
}

// ------------------------------------------------------------------------------------------
// col2im: dx[n, c, h, w] = sum over (i, j) of cols[(c*kh + i)*kw + j, column(n, ho, wo)]
// ------------------------------------------------------------------------------------------
// cols (C*kh*kw, P) is C-contiguous; column (n, ho, wo) sits at n*cs_n + ho*cs_ho + wo*cs_wo
// ((Ho*Wo, Wo, 1) for columns ordered (n, ho, wo); (1, Wo*N, N) for (ho, wo, n)).

template <typename T>
__device__ void gpunn_col2im(const T* cols, T* dx, long long total, GpunnOrder o, int kh, int kw,
                             int sh, int sw, int ph, int pw, int Ho, int Wo, long long P,
                             long long cs_n, long long cs_ho, long long cs_wo, long long xs_n,
                             long long xs_c, long long xs_h, long long xs_w) {
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total; t += step) {
        long long idx[4];
        gpunn_unravel(t, o, idx);
        const long long n = idx[0], c = idx[1];
        const int hp = (int)idx[2] + ph, wp = (int)idx[3] + pw;
        T acc = 0;  // the references' zeroed workspace
        for (int i = 0; i < kh; ++i) {
            const int ho = gpunn_window(hp, i, sh, Ho);
            if (ho < 0) continue;
            for (int j = 0; j < kw; ++j) {
                const int wo = gpunn_window(wp, j, sw, Wo);
                if (wo < 0) continue;
                const long long row = (c * kh + i) * kw + j;
                acc += cols[row * P + n * cs_n + ho * cs_ho + wo * cs_wo];
            }
        }
        dx[n * xs_n + c * xs_c + idx[2] * xs_h + idx[3] * xs_w] = acc;
    }
}

extern "C" __global__ void gpunn_col2im_float32(
    const float* cols, float* dx, long long total, long long N, long long C, long long H,
    long long W, int o0, int o1, int o2, int o3, int kh, int kw, int sh, int sw, int ph, int pw,
    int Ho, int Wo, long long P, long long cs_n, long long cs_ho, long long cs_wo, long long xs_n,
    long long xs_c, long long xs_h, long long xs_w) {
    const GpunnOrder o = {{N, C, H, W}, {o0, o1, o2, o3}};
    gpunn_col2im<float>(
        cols, dx, total, o, kh, kw, sh, sw, ph, pw, Ho, Wo, P, cs_n, cs_ho, cs_wo, xs_n, xs_c,
        xs_h, xs_w);
}

extern "C" __global__ void gpunn_col2im_float64(
    const double* cols, double* dx, long long total, long long N, long long C, long long H,
    long long W, int o0, int o1, int o2, int o3, int kh, int kw, int sh, int sw, int ph, int pw,
    int Ho, int Wo, long long P, long long cs_n, long long cs_ho, long long cs_wo, long long xs_n,
    long long xs_c, long long xs_h, long long xs_w) {
    const GpunnOrder o = {{N, C, H, W}, {o0, o1, o2, o3}};
    gpunn_col2im<double>(
        cols, dx, total, o, kh, kw, sh, sw, ph, pw, Ho, Wo, P, cs_n, cs_ho, cs_wo, xs_n, xs_c,
        xs_h, xs_w);
}

// ------------------------------------------------------------------------------------------
// max-pool backward: dx[n, c, h, w] = sum over the windows covering (h, w), cells in order, of
// dy[n, c, ho, wo] * (argmax[n, c, ho, wo] == i*kw + j)
// ------------------------------------------------------------------------------------------
// A product with the 0/1 mask rather than a branch, as the reference computes it: a NaN or inf
// in dy then spreads to the window's other cells exactly as there (inf * 0 = NaN). A pixel that
// no window covers (floor mode) gets 0.

template <typename T, typename I>
__device__ void gpunn_max_pool_backward(const T* dy, const I* argmax, T* dx, long long total,
                                        GpunnOrder o, int kh, int kw, int sh, int sw, int Ho,
                                        int Wo, long long ys_n, long long ys_c, long long ys_h,
                                        long long ys_w, long long as_n, long long as_c,
                                        long long as_h, long long as_w, long long xs_n,
                                        long long xs_c, long long xs_h, long long xs_w) {
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total; t += step) {
        long long idx[4];
        gpunn_unravel(t, o, idx);
        const long long n = idx[0], c = idx[1], h = idx[2], w = idx[3];
        T acc = 0;
        for (int i = 0; i < kh; ++i) {
            const int ho = gpunn_window((int)h, i, sh, Ho);
            if (ho < 0) continue;
            for (int j = 0; j < kw; ++j) {
                const int wo = gpunn_window((int)w, j, sw, Wo);
                if (wo < 0) continue;
                const I won = argmax[n * as_n + c * as_c + ho * as_h + wo * as_w];
                const T g = dy[n * ys_n + c * ys_c + ho * ys_h + wo * ys_w];
                acc += g * (T)((long long)won == (long long)(i * kw + j));
            }
        }
        dx[n * xs_n + c * xs_c + h * xs_h + w * xs_w] = acc;
    }
}

extern "C" __global__ void gpunn_max_pool_backward_float32_uint8(
    const float* dy, const unsigned char* argmax, float* dx, long long total, long long N,
    long long C, long long H, long long W, int o0, int o1, int o2, int o3, int kh, int kw, int sh,
    int sw, int Ho, int Wo, long long ys_n, long long ys_c, long long ys_h, long long ys_w,
    long long as_n, long long as_c, long long as_h, long long as_w, long long xs_n, long long xs_c,
    long long xs_h, long long xs_w) {
    const GpunnOrder o = {{N, C, H, W}, {o0, o1, o2, o3}};
    gpunn_max_pool_backward<float, unsigned char>(
        dy, argmax, dx, total, o, kh, kw, sh, sw, Ho, Wo, ys_n, ys_c, ys_h, ys_w, as_n, as_c, as_h,
        as_w, xs_n, xs_c, xs_h, xs_w);
}

extern "C" __global__ void gpunn_max_pool_backward_float32_int32(
    const float* dy, const int* argmax, float* dx, long long total, long long N, long long C,
    long long H, long long W, int o0, int o1, int o2, int o3, int kh, int kw, int sh, int sw,
    int Ho, int Wo, long long ys_n, long long ys_c, long long ys_h, long long ys_w, long long as_n,
    long long as_c, long long as_h, long long as_w, long long xs_n, long long xs_c, long long xs_h,
    long long xs_w) {
    const GpunnOrder o = {{N, C, H, W}, {o0, o1, o2, o3}};
    gpunn_max_pool_backward<float, int>(
        dy, argmax, dx, total, o, kh, kw, sh, sw, Ho, Wo, ys_n, ys_c, ys_h, ys_w, as_n, as_c, as_h,
        as_w, xs_n, xs_c, xs_h, xs_w);
}

extern "C" __global__ void gpunn_max_pool_backward_float64_uint8(
    const double* dy, const unsigned char* argmax, double* dx, long long total, long long N,
    long long C, long long H, long long W, int o0, int o1, int o2, int o3, int kh, int kw, int sh,
    int sw, int Ho, int Wo, long long ys_n, long long ys_c, long long ys_h, long long ys_w,
    long long as_n, long long as_c, long long as_h, long long as_w, long long xs_n, long long xs_c,
    long long xs_h, long long xs_w) {
    const GpunnOrder o = {{N, C, H, W}, {o0, o1, o2, o3}};
    gpunn_max_pool_backward<double, unsigned char>(
        dy, argmax, dx, total, o, kh, kw, sh, sw, Ho, Wo, ys_n, ys_c, ys_h, ys_w, as_n, as_c, as_h,
        as_w, xs_n, xs_c, xs_h, xs_w);
}

extern "C" __global__ void gpunn_max_pool_backward_float64_int32(
    const double* dy, const int* argmax, double* dx, long long total, long long N, long long C,
    long long H, long long W, int o0, int o1, int o2, int o3, int kh, int kw, int sh, int sw,
    int Ho, int Wo, long long ys_n, long long ys_c, long long ys_h, long long ys_w, long long as_n,
    long long as_c, long long as_h, long long as_w, long long xs_n, long long xs_c, long long xs_h,
    long long xs_w) {
    const GpunnOrder o = {{N, C, H, W}, {o0, o1, o2, o3}};
    gpunn_max_pool_backward<double, int>(
        dy, argmax, dx, total, o, kh, kw, sh, sw, Ho, Wo, ys_n, ys_c, ys_h, ys_w, as_n, as_c, as_h,
        as_w, xs_n, xs_c, xs_h, xs_w);
}
