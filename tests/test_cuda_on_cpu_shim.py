"""Tests of the CUDA shim itself (tests/cuda_on_cpu/cuda_shim.h and emulate.py).

The shim is what lets CI run gpunn's CUDA C without a GPU, so each rule it claims to model is
checked here against CUDA's documentation: thread and block indices, barriers, per-block shared
memory, the lane rules of every warp shuffle, votes, flush-to-zero, the math library's error
bounds; and each rule it enforces (a barrier some threads skip, a divergent shuffle, a deadlock,
an endless loop, an access past an array's end) fails the launch with a message that says where.

Every test kernel lives in one CUDA source, compiled once (and cached by content hash), so the
whole file costs one g++ run. Blocks are kept at 32-64 threads: each emulated thread is a host
thread, and a barrier costs a context switch per thread.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from gpunn.kernels.spec import Elementwise

from cuda_on_cpu import require_compiler
from cuda_on_cpu.emulate import (
    BarrierError,
    EmulatedModule,
    KernelDeadlockError,
    KernelFaultError,
    KernelTimeoutError,
    KernelTrapError,
    WarpSyncError,
    c_type_name,
    emulated_array_module,
    kernel_names,
)

require_compiler()
pytestmark = pytest.mark.cuda_on_cpu

SOURCE = r"""
// thread and block indices of a 3-D launch
extern "C" __global__ void indices(int* out) {
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    int* o = out + 6 * (b * blockDim.x * blockDim.y * blockDim.z + t);
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
}

// __syncthreads: nobody leaves before everybody has arrived (the count is complete), and
// nobody arrives at the next barrier before everybody has left the previous one (the phase
// values are never overwritten too early)
extern "C" __global__ void barrier_phases(int phases, int* count_seen, int* bad) {
    __shared__ int arrived;
    __shared__ int slot[1024];
    const int n = blockDim.x * blockDim.y * blockDim.z;
    const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const int g = blockIdx.x * n + t;
    if (t == 0) arrived = 0;
    __syncthreads();
    atomicAdd(&arrived, 1);
    __syncthreads();
    count_seen[g] = arrived;
    int wrong = 0;
    for (int k = 0; k < phases; ++k) {
        slot[t] = 1000 * k + (int)blockIdx.x;
        __syncthreads();
        for (int j = 0; j < n; ++j) wrong += slot[j] != 1000 * k + (int)blockIdx.x;
        __syncthreads();
    }
    bad[g] = wrong;
}

// __shared__ data belongs to the block that runs: each block sees its own values
extern "C" __global__ void shared_per_block(int* out) {
    __shared__ int s[256];
    __shared__ int stamp;
    const int t = threadIdx.x, n = blockDim.x;
    s[t] = 1000 * (int)blockIdx.x + t;
    if (t == 0) stamp = blockIdx.x;
    __syncthreads();
    out[blockIdx.x * n + t] = s[(t + 1) % n] + 1000000 * (stamp - (int)blockIdx.x);
}

// a __shared__ variable inside a template: one instance per instantiation, as in CUDA
template <typename T>
__device__ T* scratch() {
    __shared__ T buf[64];
    return buf;
}
extern "C" __global__ void shared_templates(long long* out) {
    __shared__ float* first;
    float* f = scratch<float>();
    if (threadIdx.x == 0) first = f;
    __syncthreads();
    out[threadIdx.x] = (first == f) + 2 * ((void*)scratch<int>() != (void*)f);
}

// each lane shuffles 100 + its thread index with its own argument
extern "C" __global__ void shuffle_int(int op, const int* arg, int width, int* out) {
    const int t = threadIdx.x;
    const int v = 100 + t;
    int r;
    if (op == 0) r = __shfl_sync(0xffffffffu, v, arg[t], width);
    else if (op == 1) r = __shfl_up_sync(0xffffffffu, v, (unsigned)arg[t], width);
    else if (op == 2) r = __shfl_down_sync(0xffffffffu, v, (unsigned)arg[t], width);
    else r = __shfl_xor_sync(0xffffffffu, v, arg[t], width);
    out[t] = r;
}

// 8-byte values move whole
extern "C" __global__ void shuffle_wide(double* d, long long* q) {
    const int t = threadIdx.x;
    d[t] = __shfl_down_sync(0xffffffffu, 0.25 + 1e10 * t, 1);
    q[t] = __shfl_xor_sync(0xffffffffu, (1LL << 40) + t, 5);
}

// two half-warp shuffles at once, with disjoint masks
extern "C" __global__ void shuffle_half_masks(int* out) {
    const int lane = threadIdx.x % 32;
    const unsigned mask = lane < 16 ? 0x0000ffffu : 0xffff0000u;
    out[threadIdx.x] = __shfl_down_sync(mask, 100 + lane, 1);
}

// warp reductions: the tree (lane 0 gets the sum), the butterfly (every lane does), and
// segmented butterflies of width 8
extern "C" __global__ void warp_sums(const float* x, float* tree, float* butterfly, float* seg8) {
    const int t = threadIdx.x;
    float a = x[t], b = x[t], c = x[t];
    for (int o = 16; o > 0; o /= 2) a += __shfl_down_sync(0xffffffffu, a, o);
    for (int o = 16; o > 0; o /= 2) b += __shfl_xor_sync(0xffffffffu, b, o);
    for (int o = 4; o > 0; o /= 2) c += __shfl_xor_sync(0xffffffffu, c, o, 8);
    tree[t] = a; butterfly[t] = b; seg8[t] = c;
}

extern "C" __global__ void votes(const int* pred, unsigned* ballot, int* all, int* any) {
    const int t = threadIdx.x;
    ballot[t] = __ballot_sync(0xffffffffu, pred[t]);
    all[t] = __all_sync(0xffffffffu, pred[t]);
    any[t] = __any_sync(0xffffffffu, pred[t]);
    __syncwarp();
}

// float32 flush-to-zero (nvcc -ftz=true, which CuPy always passes)
extern "C" __global__ void ftz_float(const float* a, const float* b, float* out) {
    out[0] = a[0] * b[0];                  // normal * normal = subnormal result
    out[1] = a[1] + b[1];                  // subnormal input (+ 0)
    out[2] = expf(a[2]);                   // expf(-100) = 3.7e-44, a subnormal result
    out[3] = logf(a[3]);                   // logf(subnormal): -inf when the input is flushed
    out[4] = a[4] * b[4];                  // normal, unaffected
    out[5] = a[5] > 0.0f ? 1.0f : 0.0f;    // a compare reads a flushed input as 0
}
// -ftz does not touch float64
extern "C" __global__ void ftz_double(const double* a, const double* b, double* out) {
    out[0] = a[0] * b[0];
    out[1] = exp(a[1]);
}

// the other float32 library functions flush a subnormal argument and result too
extern "C" __global__ void ftz_functions(const float* x, float* out) {
    out[0] = tanhf(x[0]);
    out[1] = log1pf(x[1]);
    out[2] = sqrtf(x[2]);
    out[3] = fabsf(x[3]);
    out[4] = expm1f(x[4]);
    out[5] = tanh(x[5]);                   // CUDA's float overload of tanh
}
extern "C" __global__ void ftz_functions_double(const double* x, double* out) {
    out[0] = tanh(x[0]);
    out[1] = log1p(x[1]);
    out[2] = sqrt(x[2]);
    out[3] = fabs(x[3]);
    out[4] = expm1(x[4]);
}

extern "C" __global__ void math_probe(int n, const float* x, float* e, float* l,
                                      const double* xd, double* ed, double* ld) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        e[i] = expf(x[i]);
        l[i] = logf(fabsf(x[i]) + 0.5f);
        ed[i] = exp(xd[i]);
        ld[i] = log(fabs(xd[i]) + 0.5);
    }
}

// --- kernels that break CUDA's rules -----------------------------------------------------
extern "C" __global__ void diverge_exit(int* out) {      // lanes 16-31 never call the shuffle
    int v = threadIdx.x;
    if (threadIdx.x % 32 < 16) v = __shfl_down_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
extern "C" __global__ void diverge_ops(int* out) {       // one mask, two different shuffles
    int v = threadIdx.x;
    if (threadIdx.x % 32 < 16) v = __shfl_down_sync(0xffffffffu, v, 1);
    else v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
extern "C" __global__ void diverge_barrier(int* out) {   // half shuffles, half at the barrier
    int v = threadIdx.x;
    if (threadIdx.x % 32 < 16) v = __shfl_down_sync(0xffffffffu, v, 1);
    __syncthreads();
    out[threadIdx.x] = v;
}
extern "C" __global__ void mask_without_self(int* out) {
    out[threadIdx.x] = __shfl_sync(0xfffffffeu, 1, 0);   // lane 0 is not in its own mask
}
extern "C" __global__ void shuffle_operands(int* out, int width, unsigned delta) {
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1, delta, width);
}
extern "C" __global__ void barrier_skipped(int* out) {   // threads 16+ exit past the barrier
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1;
}
// thread 0 waits for a flag that only a thread past the barrier sets: hangs on a GPU too
extern "C" __global__ void spin_forever(volatile int* flag, int* out) {
    if (threadIdx.x == 0) {
        while (*flag == 0) {}
    }
    __syncthreads();
    if (threadIdx.x == 1) *flag = 1;
    out[threadIdx.x] = 1;
}
extern "C" __global__ void checked(const int* x) { assert(x[threadIdx.x] >= 0); }
extern "C" __global__ void divide(const int* a, const int* b, int* q) {
    q[threadIdx.x] = a[threadIdx.x] / b[threadIdx.x];
}
extern "C" __global__ void copy_shifted(const float* in, float* out, int shift) {
    out[threadIdx.x + shift] = in[threadIdx.x];  // shift > 0: the last threads write past the end
}
extern "C" __global__ void count_blocks(int* blocks, int* threads) {
    if (threadIdx.x == 0) atomicAdd(blocks, 1);
    atomicAdd(threads, 1);
}
extern "C" __global__ void atomics(float* sum, int* biggest) {
    atomicAdd(sum, 1.0f);
    atomicMax(biggest, (int)(threadIdx.x + blockIdx.x * blockDim.x));
}
"""


@pytest.fixture(scope="module")
def module() -> EmulatedModule:
    return EmulatedModule(SOURCE, source_name="shim_tests.cu", timeout=5.0)


def launch(
    module: EmulatedModule, name: str, grid: tuple[int, ...], block: tuple[int, ...], *args: object
) -> None:
    module.get_function(name)(grid, block, args)


# ------------------------------------------------------------------------------------------
# Compilation and the call convention
# ------------------------------------------------------------------------------------------


def test_kernel_names_skip_templates_and_comments() -> None:
    code = """
    // extern "C" __global__ void commented_out(int* x) {}
    template <typename T> __global__ void templated(T* x) {}
    extern "C" __global__ void __launch_bounds__(256) bounded(int* x) {}
    extern "C" __global__ void plain(float* x, int n) {}
    """
    assert kernel_names(code) == ["bounded", "plain"]


def test_signature_is_the_kernels_real_parameter_types(module: EmulatedModule) -> None:
    f = module.get_function("math_probe")
    assert f.signature == ("i4", "*cf4", "*f4", "*f4", "*cf8", "*f8", "*f8")
    assert c_type_name("*ci8") == "const long long*"


def test_unknown_kernel_lists_the_known_ones(module: EmulatedModule) -> None:
    with pytest.raises(ValueError, match="shuffle_int"):
        module.get_function("no_such_kernel")


def test_arguments_are_checked_as_the_gpu_would_read_them(module: EmulatedModule) -> None:
    out = np.zeros(32, np.int32)
    f = module.get_function("shuffle_operands")
    f((1,), (32,), (out, np.int32(32), np.uint32(0)))  # right
    with pytest.raises(TypeError, match="int64"):  # CuPy passes a Python int as 8 bytes
        f((1,), (32,), (out, 32, np.uint32(0)))
    with pytest.raises(TypeError, match="float64"):
        f((1,), (32,), (out.astype(np.float64), np.int32(32), np.uint32(0)))
    with pytest.raises(TypeError, match="3 arguments"):
        f((1,), (32,), (out, np.int32(32)))
    with pytest.raises(TypeError, match="tuple"):
        f([1], (32,), (out, np.int32(32), np.uint32(0)))


def test_zero_dimensions_become_one_as_in_cupy(module: EmulatedModule) -> None:
    # CuPy's Function.__call__ launches max(1, d) along every dimension
    blocks, threads = np.zeros(1, np.int32), np.zeros(1, np.int32)
    launch(module, "count_blocks", (0,), (0,), blocks, threads)
    assert (blocks[0], threads[0]) == (1, 1)


def test_invalid_launch_configuration_fails_like_cuda(module: EmulatedModule) -> None:
    blocks, threads = np.zeros(1, np.int32), np.zeros(1, np.int32)
    for block in ((1025,), (32, 33), (1, 1, 65)):
        with pytest.raises(ValueError, match="invalid launch configuration"):
            launch(module, "count_blocks", (1,), block, blocks, threads)
    assert blocks[0] == 0


def test_indices_of_a_3d_launch(module: EmulatedModule) -> None:
    grid, block = (2, 3, 2), (4, 2, 3)
    n_threads, n_blocks = 4 * 2 * 3, 2 * 3 * 2
    out = np.full((n_blocks, n_threads, 6), -1, np.int32)
    launch(module, "indices", grid, block, out)
    for b in range(n_blocks):
        bidx = (b % 2, b // 2 % 3, b // 6)
        for t in range(n_threads):
            assert tuple(out[b, t]) == (t % 4, t // 4 % 2, t // 8, *bidx)


# ------------------------------------------------------------------------------------------
# Barriers and shared memory
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [(64,), (8, 4, 2)])
def test_barrier_ordering(module: EmulatedModule, block: tuple[int, ...]) -> None:
    n = math.prod(block)
    seen, bad = np.zeros(3 * n, np.int32), np.full(3 * n, -1, np.int32)
    launch(module, "barrier_phases", (3,), block, np.int32(4), seen, bad)
    assert (seen == n).all()  # every thread saw every arrival after the barrier
    assert (bad == 0).all()  # and every phase's values before the next barrier


@pytest.mark.parametrize("reverse", [False, True])
def test_shared_memory_is_per_block(reverse: bool) -> None:
    mod = EmulatedModule(SOURCE, source_name="shim_tests.cu", reverse_blocks=reverse)
    n, blocks = 64, 5
    out = np.zeros(blocks * n, np.int32)
    mod.get_function("shared_per_block")((blocks,), (n,), (out,))
    t = np.arange(n)
    expected = np.concatenate([1000 * b + (t + 1) % n for b in range(blocks)])
    np.testing.assert_array_equal(out, expected)


def test_shared_memory_in_templates(module: EmulatedModule) -> None:
    out = np.zeros(32, np.int64)
    launch(module, "shared_templates", (1,), (32,), out)
    assert (out == 3).all()  # one address per instantiation, shared by the block


def test_barrier_skipped_by_some_threads_fails(module: EmulatedModule) -> None:
    out = np.zeros(32, np.int32)
    with pytest.raises(BarrierError, match=r"reached by 16 threads, but threads 16-31 exited"):
        launch(module, "barrier_skipped", (1,), (32,), out)


# ------------------------------------------------------------------------------------------
# Warp shuffles
# ------------------------------------------------------------------------------------------


def expected_source(op: str, lane: int, arg: int, width: int) -> int:
    """The lane a shuffle reads, as the CUDA C Programming Guide words each rule."""
    seg = lane // width * width  # first lane of the caller's segment
    if op == "idx":  # srcLane modulo width, within the segment
        return seg + arg % width
    if op == "up":  # lane - delta, unless that leaves the segment
        return lane - arg if lane - seg - arg >= 0 else lane
    if op == "down":  # lane + delta, unless that leaves the segment
        return lane + arg if lane - seg + arg < width else lane
    # xor: earlier segments may be read, a later one gives the caller's own value
    target = lane ^ arg
    return target if target < seg + width else lane


@pytest.mark.parametrize("width", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("op", ["idx", "up", "down", "xor"])
def test_shuffle_lane_rules(module: EmulatedModule, op: str, width: int) -> None:
    t = np.arange(64)  # two warps: lanes are threadIdx.x % 32
    lane = t % 32
    if op == "idx":  # negative, in-range, >= width and >= 32 source lanes
        arg = (5 * lane - 37).astype(np.int32)
    else:  # offsets 0..31: inside and outside the segment
        arg = ((7 * lane + 3 * (t // 32)) % 32).astype(np.int32)
    out = np.zeros(64, np.int32)
    code = {"idx": 0, "up": 1, "down": 2, "xor": 3}[op]
    launch(module, "shuffle_int", (1,), (64,), np.int32(code), arg, np.int32(width), out)
    expected = [
        100 + 32 * (i // 32) + expected_source(op, i % 32, int(arg[i]), width) for i in range(64)
    ]
    np.testing.assert_array_equal(out, expected)


def test_shuffle_8_byte_values(module: EmulatedModule) -> None:
    d, q = np.zeros(32), np.zeros(32, np.int64)
    launch(module, "shuffle_wide", (1,), (32,), d, q)
    t = np.arange(32)
    src = np.where(t < 31, t + 1, t)
    np.testing.assert_array_equal(d, 0.25 + 1e10 * src)
    np.testing.assert_array_equal(q, (1 << 40) + (t ^ 5))


def test_shuffle_with_partial_masks(module: EmulatedModule) -> None:
    out = np.zeros(32, np.int32)
    launch(module, "shuffle_half_masks", (1,), (32,), out)
    expected = 100 + np.arange(32) + 1
    expected[31] = 131  # lane + 1 leaves the warp: own value
    expected[15] = -1  # lane 16 is outside lane 15's mask: undefined, poisoned as all-ones
    np.testing.assert_array_equal(out, expected)


def test_warp_reductions(module: EmulatedModule) -> None:
    x = np.arange(64, dtype=np.float32) * 3 - 50  # integers: every sum is exact
    tree, butterfly, seg8 = (
        np.zeros(64, np.float32),
        np.zeros(64, np.float32),
        np.zeros(64, np.float32),
    )
    launch(module, "warp_sums", (1,), (64,), x, tree, butterfly, seg8)
    warp_sum = x.reshape(2, 32).sum(axis=1)
    np.testing.assert_array_equal(tree[[0, 32]], warp_sum)
    np.testing.assert_array_equal(butterfly, np.repeat(warp_sum, 32))
    np.testing.assert_array_equal(seg8, np.repeat(x.reshape(8, 8).sum(axis=1), 8))


def test_votes(module: EmulatedModule) -> None:
    pred = (np.arange(64) % 3 == 0).astype(np.int32)
    pred[32:] = 1
    ballot, all_, any_ = np.zeros(64, np.uint32), np.zeros(64, np.int32), np.zeros(64, np.int32)
    launch(module, "votes", (1,), (64,), pred, ballot, all_, any_)
    bits0 = sum(1 << i for i in range(32) if pred[i])
    np.testing.assert_array_equal(ballot, [bits0] * 32 + [0xFFFFFFFF] * 32)
    np.testing.assert_array_equal(all_, [0] * 32 + [1] * 32)
    np.testing.assert_array_equal(any_, [1] * 64)


def test_divergent_shuffle_fails(module: EmulatedModule) -> None:
    out = np.zeros(32, np.int32)
    # found when a lane of 16-31 exits while the round waits, or when a lane of 0-15 calls it
    # after some of them exited: which comes first depends on scheduling
    with pytest.raises(WarpSyncError, match=r"divergent __shfl_down_sync.* exited without calling"):
        launch(module, "diverge_exit", (1,), (32,), out)
    # one lane calls one shuffle while the others called the other (whichever came first)
    either = r"calls __shfl_(down|xor)_sync.* while lanes .* called __shfl_(xor|down)_sync"
    with pytest.raises(WarpSyncError, match="divergent warp operation in warp 0: lane .*" + either):
        launch(module, "diverge_ops", (1,), (32,), out)


def test_shuffle_waiting_for_lanes_at_a_barrier_is_a_deadlock(module: EmulatedModule) -> None:
    out = np.zeros(32, np.int32)
    with pytest.raises(KernelDeadlockError) as err:  # found at once (a timeout is another error)
        launch(module, "diverge_barrier", (1,), (32,), out)
    text = str(err.value)
    assert "threads 0-15: waiting in __shfl_down_sync(mask=0xffffffff" in text
    assert "lanes 16-31 have not called it" in text
    assert "threads 16-31: waiting in __syncthreads() at shim_tests.cu:" in text


def test_shuffle_operand_rules(module: EmulatedModule) -> None:
    out = np.zeros(32, np.int32)
    with pytest.raises(WarpSyncError, match="does not include its own lane"):
        launch(module, "mask_without_self", (1,), (32,), out)
    with pytest.raises(WarpSyncError, match="width 12 is not a power of two"):
        launch(module, "shuffle_operands", (1,), (32,), out, np.int32(12), np.uint32(1))
    with pytest.raises(WarpSyncError, match="offset 33 is outside"):
        launch(module, "shuffle_operands", (1,), (32,), out, np.int32(32), np.uint32(33))
    with pytest.raises(WarpSyncError, match="do not exist in this block"):  # a 16-thread block
        launch(module, "shuffle_operands", (1,), (16,), out, np.int32(32), np.uint32(1))


# ------------------------------------------------------------------------------------------
# Hangs, traps, atomics
# ------------------------------------------------------------------------------------------


def test_endless_loop_times_out_and_the_module_recovers() -> None:
    mod = EmulatedModule(SOURCE, source_name="shim_tests.cu", timeout=0.3)
    flag, out = np.zeros(1, np.int32), np.zeros(32, np.int32)
    with pytest.raises(KernelTimeoutError) as err:
        mod.get_function("spin_forever")((1,), (32,), (flag, out))
    text = str(err.value)
    assert "kernel 'spin_forever'" in text and "no progress for 0.3 s" in text
    assert "thread 0: running: never reached a sync point" in text
    assert "threads 1-31: waiting in __syncthreads() at shim_tests.cu:" in text
    # the stuck thread was interrupted: the next launch runs normally
    blocks, threads = np.zeros(1, np.int32), np.zeros(1, np.int32)
    mod.get_function("count_blocks")((2,), (32,), (blocks, threads))
    assert (blocks[0], threads[0]) == (2, 64)


def test_device_assert_fails_the_launch(module: EmulatedModule) -> None:
    x = np.zeros(32, np.int32)
    launch(module, "checked", (1,), (32,), x)
    x[7] = -1
    with pytest.raises(KernelTrapError, match=r"thread 7: device-side assert failed: x\[thread"):
        launch(module, "checked", (1,), (32,), x)


def test_out_of_bounds_access_fails_and_names_the_argument(module: EmulatedModule) -> None:
    src, out = np.arange(8, dtype=np.float32), np.zeros(8, np.float32)
    f = module.get_function("copy_shifted")
    f((1,), (8,), (src, out, np.int32(0)))
    np.testing.assert_array_equal(out, src)  # in bounds: results come back from the guarded copy
    past_end = r"\d+ bytes past the end of argument 1 \(float\*\), 32 bytes long"
    with pytest.raises(KernelFaultError, match=r"invalid memory access at .*: " + past_end):
        f((1,), (8,), (src, out, np.int32(3)))
    with pytest.raises(KernelFaultError, match="null"):
        f((1,), (8,), (None, out, np.int32(0)))
    f((1,), (8,), (src[::-1].copy(), out, np.int32(0)))  # the module still works
    np.testing.assert_array_equal(out, src[::-1])


def test_integer_division_by_zero_fails(module: EmulatedModule) -> None:
    a, b, q = np.arange(4, dtype=np.int32), np.array([1, 2, 0, 4], np.int32), np.zeros(4, np.int32)
    with pytest.raises(KernelFaultError, match=r"thread 2: integer division by zero"):
        module.get_function("divide")((1,), (4,), (a, b, q))


def test_aliased_arguments_share_one_guarded_copy(module: EmulatedModule) -> None:
    buf = np.arange(16, dtype=np.float32)
    # in and out overlap (out = in + 4 elements): the kernel must see one buffer, as on a GPU
    module.get_function("copy_shifted")((1,), (4,), (buf[:8], buf[4:], np.int32(0)))
    np.testing.assert_array_equal(buf[:8], [0, 1, 2, 3, 0, 1, 2, 3])


def test_atomics(module: EmulatedModule) -> None:
    total, biggest = np.zeros(1, np.float32), np.full(1, -1, np.int32)
    launch(module, "atomics", (3,), (64,), total, biggest)
    assert (total[0], biggest[0]) == (192.0, 191)


# ------------------------------------------------------------------------------------------
# Floating point: flush-to-zero and the accuracy of the math library
# ------------------------------------------------------------------------------------------

SUB32 = np.float32(1e-40)  # a float32 subnormal
FTZ_A = np.array([1e-20, SUB32, -100, SUB32, 3, SUB32], np.float32)
FTZ_B = np.array([1e-20, 0, 0, 0, 2, 0], np.float32)


def test_float32_flush_to_zero_by_default(module: EmulatedModule) -> None:
    out = np.full(6, np.nan, np.float32)
    launch(module, "ftz_float", (1,), (1,), FTZ_A, FTZ_B, out)
    np.testing.assert_array_equal(out, [0, 0, 0, -np.inf, 6, 0])


def test_ftz_false_keeps_float32_subnormals() -> None:
    mod = EmulatedModule(SOURCE, ("-ftz=false",), source_name="shim_tests.cu")
    out = np.full(6, np.nan, np.float32)
    mod.get_function("ftz_float")((1,), (1,), (FTZ_A, FTZ_B, out))
    assert out[0] == np.float32(1e-20) * np.float32(1e-20) != 0
    assert out[1] == SUB32
    assert out[2] == np.exp(np.float32(-100)) != 0
    assert out[3] == np.log(SUB32)
    assert (out[4], out[5]) == (6, 1)


def test_ftz_leaves_float64_alone(module: EmulatedModule) -> None:
    out = np.zeros(2)
    launch(module, "ftz_double", (1,), (1,), np.array([1e-160, -720.0]), np.array([1e-160, 0]), out)
    assert out[0] == 1e-160 * 1e-160 != 0  # subnormal doubles survive, as with nvcc -ftz=true
    assert out[1] == math.exp(-720) != 0


SUBNORMALS32 = np.array([1e-40, 2e-45, 1e-40, -1e-40, -3e-42, -1e-39], np.float32)


def test_float32_library_functions_flush_subnormals(module: EmulatedModule) -> None:
    out = np.full(6, np.nan, np.float32)
    launch(module, "ftz_functions", (1,), (1,), SUBNORMALS32, out)
    np.testing.assert_array_equal(out, np.zeros(6, np.float32))
    # the C library alone would have kept them: tanh(x) = log1p(x) = expm1(x) = x for tiny x
    with np.errstate(all="ignore"):
        kept = [np.tanh, np.log1p, np.sqrt, np.abs, np.expm1, np.tanh]
        assert all(f(x) != 0 for f, x in zip(kept, SUBNORMALS32, strict=True))


def test_ftz_false_keeps_them_and_doubles_are_never_flushed() -> None:
    mod = EmulatedModule(SOURCE, ("-ftz=false",), source_name="shim_tests.cu")
    out = np.full(6, np.nan, np.float32)
    mod.get_function("ftz_functions")((1,), (1,), (SUBNORMALS32, out))
    expected = [np.tanh(SUBNORMALS32[0]), np.log1p(SUBNORMALS32[1]), np.sqrt(SUBNORMALS32[2])]
    expected += [np.abs(SUBNORMALS32[3]), np.expm1(SUBNORMALS32[4]), np.tanh(SUBNORMALS32[5])]
    np.testing.assert_array_equal(out, np.array(expected, np.float32))
    assert (out != 0).all()
    x = np.array([1e-310, 2e-315, 4e-320, -1e-310, 1e-312])
    out64 = np.full(5, np.nan)
    launch(mod, "ftz_functions_double", (1,), (1,), x, out64)
    mod_ftz = EmulatedModule(SOURCE, source_name="shim_tests.cu")  # -ftz=true: CuPy's default
    out64_ftz = np.full(5, np.nan)
    launch(mod_ftz, "ftz_functions_double", (1,), (1,), x, out64_ftz)
    expected64 = [np.tanh(x[0]), np.log1p(x[1]), np.sqrt(x[2]), np.abs(x[3]), np.expm1(x[4])]
    np.testing.assert_array_equal(out64, expected64)
    np.testing.assert_array_equal(out64_ftz, expected64)
    assert (out64_ftz != 0).all()


def ulps32(result: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|result - exact| in units of the float32 ulp at exact (exact: float64)."""
    exponent = np.floor(np.log2(np.abs(exact)))
    return np.abs(result.astype(np.float64) - exact) / np.exp2(np.maximum(exponent, -126) - 23)


def ulps64(result: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|result - exact| in units of the float64 ulp at exact (exact: long double)."""
    exponent = np.floor(np.log2(np.abs(exact)))
    diff = np.abs(result.astype(np.longdouble) - exact)
    return (diff / np.exp2(exponent - 52).astype(np.longdouble)).astype(np.float64)


@pytest.mark.parametrize("math_model", ["libm", "high", "low", "mixed"])
def test_math_error_models_stay_within_cudas_bounds(math_model: str) -> None:
    """expf within 2 ulp, logf/exp/log within 1 ulp (CUDA Math API); skewed models really err."""
    if np.finfo(np.longdouble).eps > 1e-18:
        pytest.skip("needs an 80-bit or wider long double for the float64 reference")
    mod = EmulatedModule(SOURCE, source_name="shim_tests.cu", math=math_model)  # type: ignore[arg-type]
    rng = np.random.default_rng(5)
    n = 512
    x = rng.uniform(-80, 80, n).astype(np.float32)
    xd = rng.uniform(-700, 700, n)
    e, lg = np.zeros(n, np.float32), np.zeros(n, np.float32)
    ed, ld = np.zeros(n), np.zeros(n)
    mod.get_function("math_probe")((1,), (32,), (np.int32(n), x, e, lg, xd, ed, ld))
    x64 = x.astype(np.float64)
    e_err = ulps32(e, np.exp(x64))
    xl = xd.astype(np.longdouble)
    ed_err = ulps64(ed, np.exp(xl))
    ld_err = ulps64(ld, np.log(np.abs(xl) + np.longdouble(0.5)))
    # the float32 log argument |x| + 0.5f is itself rounded in float32; compare with that value
    l_err = ulps32(lg, np.log((np.abs(x) + np.float32(0.5)).astype(np.float64)))
    assert e_err.max() <= 2.0 and l_err.max() <= 1.0
    assert ed_err.max() <= 1.0 and ld_err.max() <= 1.0
    if math_model != "libm":  # the models push results out, between max - 1 and max ulps
        assert e_err.min() >= 1.0 - 1e-9 and np.median(l_err) >= 0.25
    if math_model == "high":
        assert (e.astype(np.float64) >= np.exp(x64)).all()


def test_emulated_array_module_is_numpy_with_raw_modules() -> None:
    xp = emulated_array_module(timeout=5.0)
    assert xp.float32 is np.float32 and xp.empty is np.empty
    mod = xp.RawModule(code=SOURCE, options=("--std=c++17",), source_name="shim_tests.cu")
    assert isinstance(mod, EmulatedModule) and mod.timeout == 5.0
    assert xp.raw_modules == [mod]


# ------------------------------------------------------------------------------------------
# ElementwiseKernel: CuPy's call convention around the operation, run under the shim
# ------------------------------------------------------------------------------------------

AXPY = Elementwise("shim_axpy", "T x, T y, T s", "T z", "z = x * s + y;")
STEP = Elementwise(
    "shim_step", "T g, int32 flip", "T p, T count", "p = flip ? p + g : p - g;\ncount += (T)1;"
)


@pytest.fixture(scope="module")
def exp_xp() -> Any:
    """An array module whose two ElementwiseKernels are compiled together, once."""
    return emulated_array_module(elementwise=[AXPY, STEP])


def make(xp: Any, src: Elementwise) -> Any:
    return xp.ElementwiseKernel(src.in_params, src.out_params, src.operation, src.name)


def test_elementwise_broadcasts_and_casts_scalars_to_t(exp_xp: Any) -> None:
    axpy = make(exp_xp, AXPY)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.array([0.5, 1.5, -2.0, 4.0], np.float32)
    z = axpy(x, y, 0.1)
    assert z.dtype == np.float32 and z.shape == (3, 4)
    np.testing.assert_array_equal(z, x * np.float32(0.1) + y)  # 0.1 rounded to float32 first
    out = np.zeros((3, 4), np.float32)
    assert axpy(x, y, np.float32(2), out) is out
    np.testing.assert_array_equal(out, 2 * x + y)
    x64 = x.astype(np.float64)
    np.testing.assert_array_equal(axpy(x64, y.astype(np.float64), 0.1), x64 * 0.1 + y)
    launches = exp_xp.elementwise_launches
    assert (launches["shim_axpy", "float32"], launches["shim_axpy", "float64"]) == (2, 1)


def test_elementwise_outputs_are_read_and_written_in_place(exp_xp: Any) -> None:
    step = make(exp_xp, STEP)
    p, count = np.arange(5, dtype=np.float64), np.zeros(5)
    g = np.full(5, 0.25)
    assert step(g, 0, p, count) == (p, count)
    assert step(g, 1, p, count)[0] is p
    np.testing.assert_array_equal(p, np.arange(5))
    np.testing.assert_array_equal(count, np.full(5, 2.0))


def test_elementwise_refuses_what_cupy_refuses(exp_xp: Any) -> None:
    axpy = make(exp_xp, AXPY)
    x32, y64 = np.ones(3, np.float32), np.ones(3, np.float64)
    with pytest.raises(TypeError, match="Type is mismatched"):
        axpy(x32, y64, 1.0)
    with pytest.raises(TypeError, match="wrong number of arguments"):
        axpy(x32, x32)
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        axpy(x32, x32, 1.0, np.zeros((3, 1), np.float32))  # broadcast (3, 3): not an output's


def test_elementwise_empty_launches_nothing(exp_xp: Any) -> None:
    axpy = make(exp_xp, AXPY)
    before = dict(exp_xp.elementwise_launches)
    z = axpy(np.zeros((0, 3), np.float32), np.zeros(3, np.float32), 1.0)
    assert z.shape == (0, 3) and z.dtype == np.float32
    assert exp_xp.elementwise_launches == before


def test_elementwise_float32_flushes_subnormals_float64_does_not(exp_xp: Any) -> None:
    axpy = make(exp_xp, AXPY)
    x = np.array([1e-45, 1e-20, -1e-40, 3.0], np.float32)
    z = axpy(x, np.zeros(4, np.float32), np.float32(1e-20))
    np.testing.assert_array_equal(z, [0.0, 0.0, 0.0, np.float32(3.0) * np.float32(1e-20)])
    x64 = np.array([5e-324, 1e-160, -1e-310, 3.0])
    np.testing.assert_array_equal(axpy(x64, np.zeros(4), 1e-160), x64 * 1e-160)
    assert axpy(x64, np.zeros(4), 1e-160)[1] != 0


def test_an_elementwise_kernel_outside_the_given_sources_is_refused(exp_xp: Any) -> None:
    with pytest.raises(ValueError, match="'shim_square' is not one of the sources given"):
        exp_xp.ElementwiseKernel("T x", "T y", "y = x * x;", "shim_square")
    changed = Elementwise(AXPY.name, AXPY.in_params, AXPY.out_params, "z = x * s - y;")
    with pytest.raises(ValueError, match="not one of the sources given"):
        make(exp_xp, changed)  # same name, another operation: not what was compiled
