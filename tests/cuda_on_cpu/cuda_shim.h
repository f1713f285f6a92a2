// cuda_shim.h -- compile CUDA C kernels unchanged with g++ and run them on the CPU.
//
// Purpose: CI has no GPU, but gpunn's RawKernel sources (gpunn/kernels/*.cu), and the operations
// of its ElementwiseKernels, should still be run and checked against their Python references.
// emulate.py builds one C++ translation unit
//
//     #include "cuda_shim.h"
//     #line 1 "softmax_xent.cu"
//     <the .cu text, unchanged>
//     CUDA_SHIM_EXPORT(kernel_a) ...        (one line per __global__ function it finds)
//
// compiles it with `g++ -std=c++20` into a shared library and launches kernels through the C
// entry points at the end of this file. Include this header in exactly one translation unit.
//
// Execution model
//  * One host thread (pthread) per CUDA thread of a block. The same threads run the blocks of the
//    grid one after another: block b+1 starts when every thread has left block b.
//  * __shared__ is `static`: a function-local static has one instance per library image, and only
//    one block of a launch runs at a time (launches are serialised per image), so at any moment
//    the static storage belongs to exactly one block. Like CUDA shared memory it is not
//    initialised at block start; unlike it, a block sees what the previous block left there.
//  * __syncthreads() is a barrier over the block's threads. Warp operations (__shfl_*_sync,
//    __syncwarp, __ballot_sync, __all_sync, __any_sync) meet in a per-warp "round" keyed by the
//    mask: every lane in the mask deposits its value, the lane that completes the round computes
//    every participant's result (PTX shfl.sync rules) and releases the others.
//  * One mutex per launch guards all of that state, so the shim knows exactly when every thread
//    that has not exited is waiting: that is a deadlock, reported at once with where each thread
//    waits. Undefined behaviour that would hang or silently misbehave on a GPU (a barrier some
//    threads skip, a shuffle whose mask names a lane that never calls it, mismatched shuffles)
//    fails the launch with a message instead.
//  * A thread that never reaches a sync point (an endless loop) is caught by a no-progress
//    timeout; it is then interrupted with a signal and longjmp'd out of the kernel, so the launch
//    returns an error instead of hanging CI.
//  * float32 flush-to-zero (CuPy compiles with -ftz=true) is modelled with the SSE MXCSR FTZ/DAZ
//    bits in the emulated threads and with explicit flushing in the modelled math functions.
//  * expf/logf/exp/log can be pushed to the edge of CUDA's documented error bounds (math models
//    "high", "low", "mixed") to show that a test's tolerance covers the GPU's library.
//
// Not modelled (fails to compile, is rejected, or differs silently where said):
//  * dynamic shared memory, cooperative groups and grid sync, __activemask, __match_*_sync,
//    __reduce_*_sync, __syncthreads_count/and/or, half/bfloat16 and vector types, textures;
//  * streams (launches are synchronous) and concurrent blocks (they run one after another, so a
//    block sees the shared memory the previous one left: reading it before writing is not caught);
//  * the GPU's weaker memory model (x86 is stronger: races that need weak ordering may not show;
//    races that rely on warp lockstep do show, as on Volta and later);
//  * -fmad=true (nvcc contracts a*b+c into one rounding; here every operation rounds), the
//    accuracy of math functions other than exp/log, GPU-specific rounding of intrinsics;
//  * --use_fast_math (rejected by emulate.py).
// Linux on x86-64 and g++ 11 or later are assumed (futex, MXCSR, std::source_location).

#pragma once

#include <math.h>  // first: libstdc++'s <math.h> puts sqrt(float), fabs(float)... in the global namespace
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <source_location>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

// Every float operation must round to float, as on the GPU (x86-64 SSE does; x87 would not).
static_assert(FLT_EVAL_METHOD == 0, "cuda_shim.h needs float arithmetic without excess precision");

// ---------------------------------------------------------------------------------------------
// Function and variable qualifiers
// ---------------------------------------------------------------------------------------------

#define __global__                     // a kernel is an ordinary function run by every thread
#define __device__                     // device functions and variables are ordinary C++
#define __host__
#define __constant__                   // constant memory: an ordinary global (not read-only)
#define __managed__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)         // a tuning hint only
#define __align__(n) __attribute__((aligned(n)))
// Shared memory: one instance per library image, owned by the one block that runs (see above).
// `extern __shared__` (dynamic shared memory) and `static __shared__` are not supported;
// emulate.py rejects both with a clear message before compiling.
#define __shared__ static

// ---------------------------------------------------------------------------------------------
// Built-in types and variables
// ---------------------------------------------------------------------------------------------

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
      : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}  // NOLINT: implicit, as in CUDA
};

// Per emulated thread: each CUDA thread is a host thread, so thread_local is exactly right.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
inline constexpr int warpSize = 32;

namespace cuda_shim {

// ---------------------------------------------------------------------------------------------
// Launch state
// ---------------------------------------------------------------------------------------------

// Status codes of cuda_shim_launch; emulate.py maps each to an exception class.
enum Status : int {
  kOk = 0,
  kKernelError = 1,    // a C++ exception escaped the kernel
  kDeadlock = 2,       // every live thread waits and no wait can complete
  kWarpSync = 3,       // a warp operation broke CUDA's rules (mask, divergence, operands)
  kBarrier = 4,        // __syncthreads() that some threads of the block never reach
  kTimeout = 5,        // no progress for timeout_s (a thread in an endless loop)
  kTrap = 6,           // device-side assert() or __trap()
  kBadLaunch = 7,      // invalid launch configuration
  kUnknownKernel = 8,  // no exported kernel of that name
  kBadArgs = 9,        // wrong number of arguments
  kFault = 10,         // SIGSEGV/SIGBUS/SIGFPE in kernel code (bad address, integer / 0)
};

using Site = std::source_location;  // where a thread calls a sync operation (for diagnostics)

// Thrown (by the shim only) to unwind a thread out of the kernel once the launch has failed.
struct Abort {};

enum class State : uint8_t { kRunning, kAtBarrier, kInWarpOp, kExited };

enum class WarpOp : uint8_t { kShflIdx, kShflUp, kShflDown, kShflXor, kSyncWarp, kBallot, kAll, kAny };

inline const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::kShflIdx: return "__shfl_sync";
    case WarpOp::kShflUp: return "__shfl_up_sync";
    case WarpOp::kShflDown: return "__shfl_down_sync";
    case WarpOp::kShflXor: return "__shfl_xor_sync";
    case WarpOp::kSyncWarp: return "__syncwarp";
    case WarpOp::kBallot: return "__ballot_sync";
    case WarpOp::kAll: return "__all_sync";
    case WarpOp::kAny: return "__any_sync";
  }
  return "?";
}

// pthread mutex and condition variable (<mutex>, <condition_variable> and <chrono> would double
// the time g++ spends on this header; the shim depends on pthreads anyway).
class Mutex {
 public:
  Mutex() { pthread_mutex_init(&m_, nullptr); }
  ~Mutex() { pthread_mutex_destroy(&m_); }
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;
  void lock() { pthread_mutex_lock(&m_); }
  void unlock() { pthread_mutex_unlock(&m_); }
  pthread_mutex_t* native() { return &m_; }

 private:
  pthread_mutex_t m_;
};

// Holds a Mutex for its scope; unlock() releases it early.
class Lock {
 public:
  explicit Lock(Mutex& m) : m_(m) { m_.lock(); }
  ~Lock() {
    if (held_) m_.unlock();
  }
  Lock(const Lock&) = delete;
  Lock& operator=(const Lock&) = delete;
  void unlock() {
    m_.unlock();
    held_ = false;
  }
  Mutex& mutex() { return m_; }

 private:
  Mutex& m_;
  bool held_ = true;
};

// Seconds on the monotonic clock.
inline double now() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

class CondVar {
 public:
  CondVar() {
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&c_, &attr);
    pthread_condattr_destroy(&attr);
  }
  ~CondVar() { pthread_cond_destroy(&c_); }
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;
  void notify_all() { pthread_cond_broadcast(&c_); }
  // Wait until notified or until `deadline` (now() seconds); false on timeout.
  bool wait_until(Lock& lk, double deadline) {
    timespec ts;
    ts.tv_sec = static_cast<time_t>(deadline);
    ts.tv_nsec = static_cast<long>((deadline - static_cast<double>(ts.tv_sec)) * 1e9);
    return pthread_cond_timedwait(&c_, lk.mutex().native(), &ts) != ETIMEDOUT;
  }

 private:
  pthread_cond_t c_;
};

// Sleeping and waking on a 32-bit word. On Linux a bare futex: std::atomic::wait spins and
// yields first, which costs more than it saves with hundreds of threads on two cores.
inline void wait_while_equal(std::atomic<uint32_t>& word, uint32_t seen) {
  while (word.load(std::memory_order_acquire) == seen) {
#if defined(__linux__)
    syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAIT_PRIVATE, seen, nullptr,
            nullptr, 0);
#else
    word.wait(seen, std::memory_order_acquire);
#endif
  }
}

inline void wake_all(std::atomic<uint32_t>& word) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
          nullptr, 0);
#else
  word.notify_all();
#endif
}

static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t) &&
              std::atomic<uint32_t>::is_always_lock_free, "a futex word must be a plain uint32_t");

struct Launch;

// One emulated CUDA thread. `state`, `site` and `result` are guarded by Launch::mu; `wake` is
// atomic; in_user_code, escape and fault_* belong to the thread and its signal handlers.
struct ThreadCtx {
  Launch* launch = nullptr;
  unsigned tid = 0;   // linear index in the block: x + y*blockDim.x + z*blockDim.x*blockDim.y
  unsigned lane = 0;  // tid % 32
  unsigned warp = 0;  // tid / 32
  uint3 idx{0, 0, 0};
  pthread_t handle{};
  std::atomic<uint32_t> wake{0};  // bumped (release) by whoever ends this thread's wait
  State state = State::kRunning;
  Site site{};          // where it waits (when not running)
  uint64_t result = 0;  // a warp operation's result, written by the lane completing the round
  volatile sig_atomic_t in_user_code = 0;  // 1 while executing kernel code (not shim code)
  sigjmp_buf escape{};                     // where a stuck or faulting thread is longjmp'd to
  void* volatile fault_addr = nullptr;     // the address of a memory fault (si_addr)
  volatile int fault_signal = 0;
};

// One pending warp operation of one warp: the lanes of `mask` meet here.
struct WarpRound {
  uint32_t mask = 0;
  uint32_t arrived = 0;
  WarpOp op = WarpOp::kSyncWarp;
  int width = 32;
  unsigned size = 4;  // bytes of the exchanged value
  Site site{};        // call site of the lane that opened the round
  uint64_t value[32] = {};
  int64_t arg[32] = {};  // per-lane source lane / delta / lane mask
};

struct Warp {
  uint32_t existing = 0;  // lanes that exist (the last warp of a block may be partial)
  uint32_t exited = 0;    // lanes that have left the kernel in the current block
  std::vector<WarpRound> open;
};

// The registry entry of one exported kernel.
struct KernelInfo {
  std::string name;
  std::string signature;  // comma-separated type codes, e.g. "*cf4,*ci8,*f4,i8,i4,f4"
  unsigned n_params = 0;
  void (*invoke)(void* const* args) = nullptr;
};

struct Launch {
  explicit Launch(unsigned n) : n_threads(n), threads(n), warps((n + 31) / 32) {}

  const KernelInfo* kernel = nullptr;
  dim3 grid, block;
  unsigned n_threads;
  void* const* args = nullptr;
  double timeout_s = 10.0;
  bool ftz_arith = true;  // MXCSR FTZ+DAZ in the emulated threads
  bool ftz_math = true;   // flush float32 subnormals in the modelled math functions
  int math_model = 0;
  bool reverse_blocks = false;

  std::vector<ThreadCtx> threads;   // constructed in place, never moved
  std::vector<Warp> warps;

  Mutex mu;                         // guards everything below
  CondVar coord;                    // the launching thread waits here
  uint3 block_idx{0, 0, 0};         // the block being run
  unsigned running = 0;             // threads neither waiting nor exited
  unsigned exited = 0;              // threads that have left the kernel in this block
  unsigned at_barrier = 0;          // threads waiting in __syncthreads()
  std::atomic<uint32_t> barrier_gen{0};  // bumped when a __syncthreads() completes
  uint64_t progress = 0;            // bumped whenever a wait completes or a thread exits
  bool failed = false;
  Status status = kOk;
  std::string message;
  std::atomic<bool> abort{false};   // set once failed: every sync point then throws Abort
  std::atomic<uint32_t> start_gen{0};  // bumped to start the next block (or to quit)
  bool quit = false;
};

inline thread_local ThreadCtx* tl_thread = nullptr;

// printf into a std::string.
inline std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
inline std::string fmt(const char* f, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

// "0-15, 17, 20-31" for a sorted list of indices.
inline std::string ranges(const std::vector<unsigned>& ids) {
  std::string out;
  for (std::size_t i = 0; i < ids.size();) {
    std::size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!out.empty()) out += ", ";
    out += (i == j) ? fmt("%u", ids[i]) : fmt("%u-%u", ids[i], ids[j]);
    i = j + 1;
  }
  return out.empty() ? "none" : out;
}

inline std::string lanes_of(uint32_t mask) {
  std::vector<unsigned> ids;
  for (unsigned l = 0; l < 32; ++l)
    if (mask >> l & 1u) ids.push_back(l);
  return ranges(ids);
}

inline std::string where(const Site& s) {
  return fmt("%s:%u", s.file_name(), static_cast<unsigned>(s.line()));
}

inline std::string round_text(const WarpRound& r) {
  std::string args = fmt("mask=0x%08x", r.mask);
  if (r.op <= WarpOp::kShflXor) args += fmt(", width=%d, %u-byte value", r.width, r.size);
  return fmt("%s(%s)", op_name(r.op), args.c_str());
}

// What one thread is doing, for deadlock and timeout reports (Launch::mu held).
inline std::string describe(const Launch& L, const ThreadCtx& t) {
  switch (t.state) {
    case State::kRunning:
      return "running: never reached a sync point (an endless loop?)";
    case State::kExited:
      return "exited";
    case State::kAtBarrier:
      return "waiting in __syncthreads() at " + where(t.site);
    case State::kInWarpOp:
      for (const WarpRound& r : L.warps[t.warp].open) {
        if (r.arrived >> t.lane & 1u) {
          return fmt("waiting in %s at %s; of its lanes %s, lanes %s have not called it",
                     round_text(r).c_str(), where(t.site).c_str(), lanes_of(r.mask).c_str(),
                     lanes_of(r.mask & ~r.arrived).c_str());
        }
      }
      return "waiting in a warp operation at " + where(t.site);
  }
  return "?";
}

// Every thread's state, threads with the same description grouped (Launch::mu held).
inline std::string describe_all(const Launch& L) {
  std::vector<std::string> text;
  for (const ThreadCtx& t : L.threads) text.push_back(describe(L, t));
  std::string out;
  std::vector<bool> done(text.size(), false);
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (done[i]) continue;
    std::vector<unsigned> ids;
    for (std::size_t j = i; j < text.size(); ++j) {
      if (!done[j] && text[j] == text[i]) {
        ids.push_back(static_cast<unsigned>(j));
        done[j] = true;
      }
    }
    out += fmt("\n  thread%s %s: ", ids.size() > 1 ? "s" : "", ranges(ids).c_str()) + text[i];
  }
  return out;
}

// Mark a waiting thread as released (Launch::mu held); the caller wakes it with wake() after
// unlocking, so woken threads do not immediately block on the mutex the waker still holds.
inline void release(Launch& L, ThreadCtx& t) {
  t.state = State::kRunning;
  ++L.running;
  t.wake.fetch_add(1, std::memory_order_release);
}

inline void wake(ThreadCtx& t) { wake_all(t.wake); }

// Record the launch's first failure, make every sync point throw Abort from now on, and wake
// every waiting thread so it unwinds (Launch::mu held).
inline void fail_locked(Launch& L, Status status, const std::string& what) {
  if (!L.failed) {
    L.failed = true;
    L.status = status;
    L.message = fmt("kernel '%s', block (%u,%u,%u) of grid (%u,%u,%u), blockDim (%u,%u,%u): ",
                    L.kernel->name.c_str(), L.block_idx.x, L.block_idx.y, L.block_idx.z,
                    L.grid.x, L.grid.y, L.grid.z, L.block.x, L.block.y, L.block.z) +
                what;
  }
  L.abort.store(true);
  L.barrier_gen.fetch_add(1, std::memory_order_release);
  wake_all(L.barrier_gen);
  for (ThreadCtx& t : L.threads) {
    if (t.state == State::kInWarpOp) {
      t.wake.fetch_add(1, std::memory_order_release);
      wake_all(t.wake);
    }
  }
  L.coord.notify_all();
}

// Fail the launch from inside a kernel thread and unwind that thread.
[[noreturn]] inline void fail_now(Status status, const std::string& what) {
  Launch& L = *tl_thread->launch;
  {
    Lock lk(L.mu);
    fail_locked(L, status, what);
  }
  throw Abort{};
}

inline void deadlock_locked(Launch& L) {
  fail_locked(L, kDeadlock,
              "deadlock: every thread that has not exited is waiting, and none of the waits "
              "can complete:" + describe_all(L));
}

// Marks the shim's own code, so the timeout's signal handler never longjmps out of it.
struct ShimSection {
  ThreadCtx& t;
  explicit ShimSection(ThreadCtx& t_) : t(t_) { t.in_user_code = 0; }
  ~ShimSection() { t.in_user_code = 1; }
};

// Block the calling thread until `word` changes (lk holds Launch::mu and is released while
// waiting). `word` is the thread's own wake counter, or the barrier generation.
inline void wait_locked(Lock& lk, Launch& L, ThreadCtx& me, State state,
                        const Site& site, std::atomic<uint32_t>& word) {
  me.state = state;
  me.site = site;
  const uint32_t seen = word.load(std::memory_order_relaxed);
  --L.running;
  // Waits complete only when their last participant arrives, and that participant does not
  // wait: if nobody is left running, nobody can ever complete anything.
  if (L.running == 0) deadlock_locked(L);
  lk.unlock();
  wait_while_equal(word, seen);
  if (L.abort.load()) throw Abort{};
}

// ---------------------------------------------------------------------------------------------
// __syncthreads
// ---------------------------------------------------------------------------------------------

inline void syncthreads(const Site& site) {
  ThreadCtx& me = *tl_thread;
  Launch& L = *me.launch;
  ShimSection guard(me);
  Lock lk(L.mu);
  if (L.abort.load()) throw Abort{};
  ++L.at_barrier;
  if (L.at_barrier + L.exited < L.n_threads) {
    wait_locked(lk, L, me, State::kAtBarrier, site, L.barrier_gen);
    return;
  }
  // Last arrival. CUDA requires every thread of the block to reach the barrier ("allowed in
  // conditional code only if the condition evaluates identically across the entire block"):
  // threads that exited instead make it undefined (a hang or garbage on the GPU).
  if (L.exited > 0) {
    std::vector<unsigned> gone;
    for (const ThreadCtx& t : L.threads)
      if (t.state == State::kExited) gone.push_back(t.tid);
    fail_locked(L, kBarrier,
                fmt("__syncthreads() at %s is reached by %u threads, but threads %s exited "
                    "without reaching it (undefined behaviour in CUDA)",
                    where(site).c_str(), L.at_barrier, ranges(gone).c_str()));
    throw Abort{};
  }
  L.at_barrier = 0;
  for (ThreadCtx& t : L.threads) {
    if (t.state == State::kAtBarrier) {
      t.state = State::kRunning;
      ++L.running;
    }
  }
  ++L.progress;
  L.barrier_gen.fetch_add(1, std::memory_order_release);
  lk.unlock();
  wake_all(L.barrier_gen);  // one futex wake for the whole block
}

// ---------------------------------------------------------------------------------------------
// Warp operations
// ---------------------------------------------------------------------------------------------

inline constexpr uint64_t kPoison = ~uint64_t{0};  // value read from a non-participating lane

// The result of one lane of a completed shuffle round, following the PTX ISA's shfl.sync
// pseudo-code, with c = ((32 - width) << 8) | clamp as CUDA's sm_30_intrinsics.hpp builds it
// (clamp = 0 for __shfl_up_sync, 0x1f otherwise):
//   segmask = c[12:8]   maxLane = (lane & segmask) | (clamp & ~segmask)   minLane = lane & segmask
//   up:   j = lane - b, in range if j >= maxLane (= first lane of the segment)
//   down: j = lane + b, in range if j <= maxLane (= last lane of the segment)
//   xor:  j = lane ^ b, in range if j <= maxLane (earlier segments are reachable, later are not)
//   idx:  j = minLane | (b & ~segmask)          (srcLane modulo width, inside the segment)
// Out of range: the lane's own value.
inline uint64_t shuffle_result(const WarpRound& r, unsigned lane) {
  const unsigned segmask = static_cast<unsigned>(32 - r.width) & 31u;
  const unsigned clamp = (r.op == WarpOp::kShflUp) ? 0u : 31u;
  const unsigned b = static_cast<unsigned>(r.arg[lane]) & 31u;  // b[4:0]
  const int max_lane = static_cast<int>((lane & segmask) | (clamp & ~segmask));
  const int min_lane = static_cast<int>(lane & segmask);
  int j = static_cast<int>(lane);
  bool in_range = true;
  switch (r.op) {
    case WarpOp::kShflUp: j = static_cast<int>(lane) - static_cast<int>(b); in_range = j >= max_lane; break;
    case WarpOp::kShflDown: j = static_cast<int>(lane + b); in_range = j <= max_lane; break;
    case WarpOp::kShflXor: j = static_cast<int>(lane ^ b); in_range = j <= max_lane; break;
    case WarpOp::kShflIdx: j = min_lane | static_cast<int>(b & ~segmask); in_range = j <= max_lane; break;
    default: break;
  }
  if (!in_range) j = static_cast<int>(lane);
  // Reading a lane outside the mask is undefined in CUDA: hand back a conspicuous value
  // (all bits set: NaN for floats, -1 for signed integers) rather than failing, because code
  // that ignores such a result (e.g. a partial-warp reduction's upper lanes) is legitimate.
  if (!(r.mask >> j & 1u)) return kPoison;
  return r.value[j];
}

// Compute every participant's result and release the waiting lanes (Launch::mu held); returns
// the lanes the caller must wake() once it has unlocked.
inline uint32_t complete_round(Launch& L, unsigned warp, const WarpRound& r) {
  uint32_t ballot = 0;
  for (unsigned l = 0; l < 32; ++l)
    if ((r.mask >> l & 1u) && r.value[l] != 0) ballot |= 1u << l;
  for (unsigned l = 0; l < 32; ++l) {
    if (!(r.mask >> l & 1u)) continue;
    ThreadCtx& t = L.threads[warp * 32 + l];
    switch (r.op) {
      case WarpOp::kBallot: t.result = ballot; break;
      case WarpOp::kAll: t.result = ballot == r.mask; break;
      case WarpOp::kAny: t.result = ballot != 0; break;
      case WarpOp::kSyncWarp: t.result = 0; break;
      default: t.result = shuffle_result(r, l); break;
    }
  }
  uint32_t to_wake = 0;
  for (unsigned l = 0; l < 32; ++l) {
    if (!(r.mask >> l & 1u)) continue;
    ThreadCtx& t = L.threads[warp * 32 + l];
    if (t.state == State::kInWarpOp) {
      release(L, t);
      to_wake |= 1u << l;
    }
  }
  ++L.progress;
  return to_wake;
}

// Join (or open) the round for `mask` in the calling lane's warp and return this lane's result.
inline uint64_t warp_op(WarpOp op, uint32_t mask, uint64_t value, int64_t arg, int width,
                        unsigned size, const Site& site) {
  ThreadCtx& me = *tl_thread;
  Launch& L = *me.launch;
  ShimSection guard(me);
  const uint32_t bit = 1u << me.lane;
  const char* name = op_name(op);
  const bool shuffle = op <= WarpOp::kShflXor;
  // Operand rules (CUDA C Programming Guide, warp shuffle functions).
  if (shuffle && (width < 1 || width > 32 || (width & (width - 1)) != 0)) {
    fail_now(kWarpSync, fmt("%s at %s: width %d is not a power of two in [1, 32] (undefined in "
                            "CUDA)", name, where(site).c_str(), width));
  }
  if ((op == WarpOp::kShflUp || op == WarpOp::kShflDown || op == WarpOp::kShflXor) &&
      (arg < 0 || arg >= 32)) {
    // The Programming Guide says "lane +- delta out of range -> own value"; the PTX ISA uses
    // only the low 5 bits (delta 33 acts as 1). They disagree, so no answer is safe.
    fail_now(kWarpSync, fmt("%s at %s: offset %lld is outside [0, 31] (the CUDA guide and the "
                            "PTX ISA disagree on the result)", name, where(site).c_str(),
                            static_cast<long long>(arg)));
  }
  Lock lk(L.mu);
  if (L.abort.load()) throw Abort{};
  Warp& w = L.warps[me.warp];
  // The calling lane must be in the mask.
  if (!(mask & bit)) {
    fail_locked(L, kWarpSync, fmt("thread %u (warp %u lane %u) calls %s at %s with mask 0x%08x, "
                                  "which does not include its own lane",
                                  me.tid, me.warp, me.lane, name, where(site).c_str(), mask));
    throw Abort{};
  }
  // The mask may only name lanes that exist and have not exited: they must all call it too.
  if (mask & ~w.existing) {
    fail_locked(L, kWarpSync, fmt("%s at %s: mask 0x%08x names lanes %s of warp %u, which do "
                                  "not exist in this block", name, where(site).c_str(), mask,
                                  lanes_of(mask & ~w.existing).c_str(), me.warp));
    throw Abort{};
  }
  if (mask & w.exited) {
    fail_locked(L, kWarpSync, fmt("divergent %s at %s (warp %u, mask 0x%08x): lanes %s have "
                                  "already exited without calling it", name,
                                  where(site).c_str(), me.warp, mask,
                                  lanes_of(mask & w.exited).c_str()));
    throw Abort{};
  }
  // At most one round per mask is open: a lane in the mask cannot start the next round before
  // this one completes. A lane joining it must make the same call.
  WarpRound* r = nullptr;
  for (WarpRound& o : w.open)
    if (o.mask == mask) r = &o;
  if (r != nullptr && (r->op != op || (shuffle && (r->width != width || r->size != size)))) {
    WarpRound mine;
    mine.mask = mask;
    mine.op = op;
    mine.width = width;
    mine.size = size;
    fail_locked(L, kWarpSync,
                fmt("divergent warp operation in warp %u: lane %u calls %s at %s while lanes %s "
                    "called %s at %s (all lanes in a mask must execute the same intrinsic)",
                    me.warp, me.lane, round_text(mine).c_str(), where(site).c_str(),
                    lanes_of(r->arrived).c_str(), round_text(*r).c_str(), where(r->site).c_str()));
    throw Abort{};
  }
  if (r == nullptr) {
    r = &w.open.emplace_back();
    r->mask = mask;
    r->op = op;
    r->width = width;
    r->size = size;
    r->site = site;
  }
  r->arrived |= bit;
  r->value[me.lane] = value;
  r->arg[me.lane] = arg;
  if (r->arrived != r->mask) {
    wait_locked(lk, L, me, State::kInWarpOp, site, me.wake);
    return me.result;  // written by the completing lane before it released us
  }
  const uint32_t to_wake = complete_round(L, me.warp, *r);
  w.open.erase(w.open.begin() + (r - w.open.data()));
  const uint64_t result = me.result;
  lk.unlock();
  for (unsigned l = 0; l < 32; ++l)
    if (to_wake >> l & 1u) wake(L.threads[me.warp * 32 + l]);
  return result;
}

template <typename T>
inline T shuffle(WarpOp op, unsigned mask, T var, int64_t arg, int width, const Site& site) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of 1-8 byte values");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  const uint64_t out = warp_op(op, mask, bits, arg, width, sizeof(T), site);
  T r;
  std::memcpy(&r, &out, sizeof(T));
  return r;
}

// ---------------------------------------------------------------------------------------------
// Device-side errors
// ---------------------------------------------------------------------------------------------

[[noreturn]] inline void trap(const std::string& what) {
  ShimSection guard(*tl_thread);
  fail_now(kTrap, fmt("thread %u: ", tl_thread->tid) + what);
}

// ---------------------------------------------------------------------------------------------
// Math: CUDA accuracy and flush-to-zero
// ---------------------------------------------------------------------------------------------

namespace math {

// How the modelled functions err (set per launch):
//   kLibm:  glibc's result (< 1 ulp): the closest to exact, so the least demanding of tolerances;
//   kHigh / kLow: exact +/- (max_ulp - 0.5) ulps, rounded: between max_ulp - 1 and max_ulp ulps
//                 away, always above / below -- the edge of CUDA's documented bound;
//   kMixed: like kHigh or kLow, the direction chosen by a hash of the input.
enum Model : int { kLibm = 0, kHigh = 1, kLow = 2, kMixed = 3 };

inline thread_local bool ftz = false;  // flush float32 subnormals (nvcc -ftz=true)
inline thread_local int model = kLibm;

// -ftz=true: a float32 subnormal input or result becomes a zero of the same sign.
inline float flush(float x) {
  const uint32_t b = std::bit_cast<uint32_t>(x);
  if (ftz && (b & 0x7f800000u) == 0 && (b & 0x007fffffu) != 0)
    return std::bit_cast<float>(b & 0x80000000u);
  return x;
}

template <typename T>
inline int direction(T x) {
  switch (model) {
    case kHigh: return 1;
    case kLow: return -1;
    case kMixed: {
      uint64_t h = 0;
      std::memcpy(&h, &x, sizeof(T));
      h ^= h >> 29;
      h *= 0xbf58476d1ce4e5b9ull;
      h ^= h >> 32;
      return (h & 1u) ? 1 : -1;
    }
    default: return 0;
  }
}

// `exact` (computed in the wider type W) moved by (max_ulp - 0.5) ulps of T in direction d and
// rounded to T: at most max_ulp ulps from the exact value, as CUDA's documentation allows. (If
// the move crosses up into the next binade, where rounding can add a whole ulp of the old one,
// it moves max_ulp - 1 ulps instead.)
template <typename T, typename W>
inline T skewed(W exact, double max_ulp, int d) {
  if (!std::isfinite(exact) || exact == 0) return static_cast<T>(exact);
  const int e = std::max(std::ilogb(exact), std::numeric_limits<T>::min_exponent - 1);
  const W ulp = std::ldexp(W(1), e - (std::numeric_limits<T>::digits - 1));
  W target = exact + W(d) * W(max_ulp - 0.5) * ulp;
  if (std::ilogb(target) > e) target = exact + W(d) * W(max_ulp - 1.0) * ulp;
  return static_cast<T>(target);
}

// Maximum errors from the CUDA Math API documentation (no -use_fast_math, as CuPy compiles).
inline constexpr double kExpfUlp = 2, kLogfUlp = 1, kExpUlp = 1, kLogUlp = 1;

inline float expf_(float x) {
  x = flush(x);
  const int d = direction(x);
  return flush(d ? skewed<float>(std::exp(double(x)), kExpfUlp, d) : ::expf(x));
}
inline float logf_(float x) {
  x = flush(x);
  const int d = direction(x);
  return flush(d ? skewed<float>(std::log(double(x)), kLogfUlp, d) : ::logf(x));
}
inline double exp_(double x) {
  const int d = direction(x);
  return d ? skewed<double>(std::exp(static_cast<long double>(x)), kExpUlp, d) : ::exp(x);
}
inline double log_(double x) {
  const int d = direction(x);
  return d ? skewed<double>(std::log(static_cast<long double>(x)), kLogUlp, d) : ::log(x);
}
// Fast intrinsics: max ulp error 2 + floor(|1.173 x|) for __expf; for __logf 3 ulp outside
// [0.5, 2] and an absolute 2^-21.41 inside (modelled here as 3 ulp everywhere: a simplification).
inline float fast_expf(float x) {
  x = flush(x);
  const int d = direction(x);
  const double bound = 2.0 + std::floor(std::fabs(1.173 * double(x)));
  return flush(d ? skewed<float>(std::exp(double(x)), bound, d) : ::expf(x));
}
inline float fast_logf(float x) {
  x = flush(x);
  const int d = direction(x);
  return flush(d ? skewed<float>(std::log(double(x)), 3.0, d) : ::logf(x));
}

}  // namespace math

// ---------------------------------------------------------------------------------------------
// Kernel registry and argument unpacking
// ---------------------------------------------------------------------------------------------

inline std::vector<KernelInfo>& registry() {
  static std::vector<KernelInfo> kernels;
  return kernels;
}

// NumPy-like code of a parameter type: f4 f8 i1..i8 u1..u8 b1, V<n> (other by-value types),
// '*' + 'c' (const) + pointee code for pointers, v for void.
template <typename T>
std::string type_code() {
  if constexpr (std::is_pointer_v<T>) {
    using P = std::remove_pointer_t<T>;
    return std::string("*") + (std::is_const_v<P> ? "c" : "") + type_code<std::remove_cv_t<P>>();
  } else if constexpr (std::is_void_v<T>) {
    return "v";
  } else if constexpr (std::is_same_v<T, bool>) {
    return "b1";
  } else if constexpr (std::is_floating_point_v<T>) {
    return "f" + std::to_string(sizeof(T));
  } else if constexpr (std::is_integral_v<T>) {
    return (std::is_signed_v<T> ? "i" : "u") + std::to_string(sizeof(T));
  } else {
    return "V" + std::to_string(sizeof(T));
  }
}

template <auto Fn>
struct Invoker;

// Calls a kernel `void f(A...)` with arguments given as an array of pointers to their bytes
// (CUDA's kernelParams convention, which CuPy and emulate.py use).
template <typename... A, void (*Fn)(A...)>
struct Invoker<Fn> {
  template <typename T>
  static T load(const void* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
  }
  template <std::size_t... I>
  static void call_with(void* const* args, std::index_sequence<I...>) {
    Fn(load<std::remove_cv_t<A>>(args[I])...);
  }
  static void call(void* const* args) { call_with(args, std::index_sequence_for<A...>{}); }
  static std::string signature() {
    const std::vector<std::string> codes{type_code<std::remove_cv_t<A>>()...};
    std::string s;
    for (const std::string& c : codes) s += (s.empty() ? "" : ",") + c;
    return s;
  }
};

struct Registrar {
  Registrar(const char* name, std::string signature, unsigned n_params,
            void (*invoke)(void* const*)) {
    registry().push_back({name, std::move(signature), n_params, invoke});
  }
};

template <typename F>
struct Arity;
template <typename... A>
struct Arity<void (*)(A...)> {
  static constexpr unsigned value = sizeof...(A);
};

// ---------------------------------------------------------------------------------------------
// Running a launch
// ---------------------------------------------------------------------------------------------

inline int escape_signal() { return SIGRTMIN + 3; }

// The launch running in this library image (launches are serialised per image), so a signal
// handler can tell an emulated thread from any other without touching thread-local storage
// (which a dlopen'ed library may allocate lazily: not async-signal-safe).
inline std::atomic<Launch*> active_launch{nullptr};

// The calling thread's context if it is an emulated thread of the active launch running kernel
// code (not shim code, which may hold the launch mutex), else nullptr. Async-signal-safe.
inline ThreadCtx* interruptible_self() {
  Launch* L = active_launch.load();
  if (L == nullptr) return nullptr;
  const pthread_t self = pthread_self();
  for (ThreadCtx& t : L->threads)
    if (pthread_equal(t.handle, self)) return t.in_user_code ? &t : nullptr;
  return nullptr;
}

// Signal handler of the timeout: jump out of kernel code that never reaches a sync point.
extern "C" inline void cuda_shim_escape_handler(int) {
  if (ThreadCtx* t = interruptible_self()) siglongjmp(t->escape, 1);
}

inline struct sigaction previous_segv, previous_bus, previous_fpe;

// SIGSEGV/SIGBUS (an access past a guard page, a null pointer) or SIGFPE (integer division by
// zero, which a GPU answers with an unspecified value) in kernel code: leave the kernel and fail
// the launch. Any other fault goes to the handler installed before (e.g. Python's
// faulthandler), or gets the default action, exactly as without the shim.
extern "C" inline void cuda_shim_fault_handler(int sig, siginfo_t* info, void* context) {
  if (ThreadCtx* t = interruptible_self()) {
    t->fault_addr = info->si_addr;
    t->fault_signal = sig;
    siglongjmp(t->escape, 2);
  }
  const struct sigaction& old =
      sig == SIGSEGV ? previous_segv : (sig == SIGBUS ? previous_bus : previous_fpe);
  if ((old.sa_flags & SA_SIGINFO) != 0 && old.sa_sigaction != nullptr) {
    old.sa_sigaction(sig, info, context);
  } else if (old.sa_handler == SIG_DFL) {
    signal(sig, SIG_DFL);  // returning re-runs the faulting instruction: the default action
  } else if (old.sa_handler != SIG_IGN) {
    old.sa_handler(sig);
  }
}

// Install the fault handlers once per library image (under the launch mutex).
inline void install_fault_handlers() {
  static bool installed = false;
  if (installed) return;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = cuda_shim_fault_handler;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &previous_segv);
  sigaction(SIGBUS, &sa, &previous_bus);
  sigaction(SIGFPE, &sa, &previous_fpe);
  installed = true;
}

// A thread leaves the kernel (normally, by unwinding after a failure, or by escaping).
inline void thread_exit(Launch& L, ThreadCtx& me) {
  Lock lk(L.mu);
  me.state = State::kExited;
  ++L.exited;
  --L.running;
  ++L.progress;
  Warp& w = L.warps[me.warp];
  w.exited |= 1u << me.lane;
  if (!L.failed) {
    // A warp operation waiting for this lane can never complete.
    for (const WarpRound& r : w.open) {
      if (r.mask >> me.lane & 1u) {
        fail_locked(L, kWarpSync,
                    fmt("divergent %s at %s (warp %u): lane %u (thread %u) exited without "
                        "calling it (lanes %s had called it so far)", round_text(r).c_str(),
                        where(r.site).c_str(), me.warp, me.lane, me.tid,
                        lanes_of(r.arrived).c_str()));
        break;
      }
    }
  }
  if (!L.failed && L.at_barrier > 0 && L.at_barrier + L.exited == L.n_threads) {
    std::vector<unsigned> gone;
    for (const ThreadCtx& t : L.threads)
      if (t.state == State::kExited) gone.push_back(t.tid);
    const ThreadCtx* waiter = nullptr;
    for (const ThreadCtx& t : L.threads)
      if (t.state == State::kAtBarrier) waiter = &t;
    fail_locked(L, kBarrier,
                fmt("__syncthreads() at %s is reached by %u threads, but threads %s exited "
                    "without reaching it (undefined behaviour in CUDA)",
                    where(waiter->site).c_str(), L.at_barrier, ranges(gone).c_str()));
  }
  if (!L.failed && L.running == 0 && L.exited < L.n_threads) deadlock_locked(L);
  if (L.exited == L.n_threads) L.coord.notify_all();
}

// Run the kernel body once in the calling (emulated) thread.
inline void run_kernel(Launch& L, ThreadCtx& me) {
  const int jumped = sigsetjmp(me.escape, 1);
  if (jumped != 0) {  // 1: out of an endless loop after a timeout; 2: out of a memory fault
    me.in_user_code = 0;
    if (jumped == 2) {
      Lock lk(L.mu);
      if (me.fault_signal == SIGFPE) {
        fail_locked(L, kFault, fmt("thread %u: integer division by zero or overflow (SIGFPE)",
                                   me.tid));
      } else {
        fail_locked(L, kFault, fmt("thread %u: invalid memory access at address %p (%s)", me.tid,
                                   me.fault_addr, me.fault_signal == SIGBUS ? "SIGBUS" : "SIGSEGV"));
      }
    }
    return;
  }
  try {
    me.in_user_code = 1;
    L.kernel->invoke(L.args);
  } catch (const Abort&) {
    // the launch failed; this thread has unwound
  } catch (const std::exception& e) {
    me.in_user_code = 0;
    Lock lk(L.mu);
    fail_locked(L, kKernelError, fmt("thread %u: C++ exception: %s", me.tid, e.what()));
  }
  me.in_user_code = 0;
}

inline void* worker_main(void* p) {
  ThreadCtx& me = *static_cast<ThreadCtx*>(p);
  Launch& L = *me.launch;
  tl_thread = &me;
  threadIdx = me.idx;
  blockDim = L.block;
  gridDim = L.grid;
  math::ftz = L.ftz_math;
  math::model = L.math_model;
#if defined(__SSE__)
  // FTZ (bit 15): subnormal results become 0; DAZ (bit 6): subnormal inputs read as 0.
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(L.ftz_arith ? (csr | 0x8040u) : (csr & ~0x8040u));
#endif
  uint32_t seen = 0;
  for (;;) {
    uint32_t gen;
    wait_while_equal(L.start_gen, seen);
    gen = L.start_gen.load(std::memory_order_acquire);
    seen = gen;
    if (L.quit) return nullptr;
    blockIdx = L.block_idx;
    run_kernel(L, me);
    thread_exit(L, me);
  }
}

// Reset the per-block state and start the block (the threads are all parked).
inline void start_block(Launch& L, uint3 idx) {
  {
    Lock lk(L.mu);
    L.block_idx = idx;
    L.running = L.n_threads;
    L.exited = 0;
    L.at_barrier = 0;
    ++L.progress;
    for (Warp& w : L.warps) {
      w.exited = 0;
      w.open.clear();
    }
    for (ThreadCtx& t : L.threads) t.state = State::kRunning;
  }
  L.start_gen.fetch_add(1, std::memory_order_release);
  wake_all(L.start_gen);
}

// Wait for every thread to leave the current block. Without progress for timeout_s the launch
// fails; threads still stuck in kernel code are then interrupted; if even that fails, the
// process aborts rather than return while threads may still write to the caller's arrays.
inline void finish_block(Launch& L, bool& handler_installed, struct sigaction& old_action) {
  Lock lk(L.mu);
  uint64_t seen = L.progress;
  double deadline = now() + L.timeout_s;
  int stage = 0;
  while (L.exited < L.n_threads) {
    if (L.coord.wait_until(lk, deadline) || now() < deadline) continue;
    if (L.exited >= L.n_threads) break;
    if (stage == 0) {
      if (!L.failed && L.progress != seen) {  // slow, not stuck
        seen = L.progress;
        deadline = now() + L.timeout_s;
        continue;
      }
      if (!L.failed) {
        fail_locked(L, kTimeout, fmt("no progress for %g s (timeout); the threads:",
                                     L.timeout_s) + describe_all(L));
      }
      stage = 1;  // let woken threads unwind
      deadline = now() + 0.2;
    } else if (stage == 1) {
      if (!handler_installed) {
        struct sigaction sa;
        std::memset(&sa, 0, sizeof sa);
        sa.sa_handler = cuda_shim_escape_handler;
        sigemptyset(&sa.sa_mask);
        sigaction(escape_signal(), &sa, &old_action);
        handler_installed = true;
      }
      for (ThreadCtx& t : L.threads)
        if (t.state == State::kRunning) pthread_kill(t.handle, escape_signal());
      stage = 2;
      deadline = now() + 5.0;
    } else {
      std::fprintf(stderr, "cuda_shim: %s\ncuda_shim: threads could not be stopped:%s\n",
                   L.message.c_str(), describe_all(L).c_str());
      std::abort();
    }
  }
}

inline int run_launch(Launch& L) {
  const unsigned n = L.n_threads;
  for (unsigned w = 0; w < L.warps.size(); ++w) {
    const unsigned lanes = std::min(32u, n - 32 * w);
    L.warps[w].existing = lanes == 32 ? ~0u : ((1u << lanes) - 1u);
  }
  for (unsigned i = 0; i < n; ++i) {
    ThreadCtx& t = L.threads[i];
    t.launch = &L;
    t.tid = i;
    t.lane = i % 32;
    t.warp = i / 32;
    t.idx = {i % L.block.x, (i / L.block.x) % L.block.y, i / (L.block.x * L.block.y)};
  }
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);  // CUDA's default stack is 1 KiB per thread
  unsigned started = 0;
  for (; started < n; ++started)
    if (pthread_create(&L.threads[started].handle, &attr, worker_main, &L.threads[started])) break;
  pthread_attr_destroy(&attr);

  bool handler_installed = false;
  struct sigaction old_action;
  install_fault_handlers();
  active_launch.store(&L);
  if (started < n) {
    L.failed = true;
    L.status = kBadLaunch;
    L.message = fmt("could not start %u host threads (started %u)", n, started);
  } else {
    const unsigned nb = L.grid.x * L.grid.y * L.grid.z;
    for (unsigned k = 0; k < nb && !L.failed; ++k) {
      const unsigned b = L.reverse_blocks ? nb - 1 - k : k;
      start_block(L, {b % L.grid.x, (b / L.grid.x) % L.grid.y, b / (L.grid.x * L.grid.y)});
      finish_block(L, handler_installed, old_action);
    }
  }
  {
    Lock lk(L.mu);
    L.quit = true;
  }
  L.start_gen.fetch_add(1, std::memory_order_release);
  wake_all(L.start_gen);
  for (unsigned i = 0; i < started; ++i) pthread_join(L.threads[i].handle, nullptr);
  active_launch.store(nullptr);
  if (handler_installed) sigaction(escape_signal(), &old_action, nullptr);
  return L.failed ? L.status : kOk;
}

inline const KernelInfo* find_kernel(const char* name) {
  for (const KernelInfo& k : registry())
    if (k.name == name) return &k;
  return nullptr;
}

inline void copy_out(const std::string& s, char* out, std::size_t cap) {
  if (out == nullptr || cap == 0) return;
  const std::size_t n = std::min(s.size(), cap - 1);
  std::memcpy(out, s.data(), n);
  out[n] = '\0';
}

}  // namespace cuda_shim

// ---------------------------------------------------------------------------------------------
// CUDA device API (global namespace, as CUDA's headers declare it)
// ---------------------------------------------------------------------------------------------

inline void __syncthreads(const std::source_location site = std::source_location::current()) {
  cuda_shim::syncthreads(site);
}

inline void __syncwarp(unsigned mask = 0xffffffffu,
                       const std::source_location site = std::source_location::current()) {
  cuda_shim::warp_op(cuda_shim::WarpOp::kSyncWarp, mask, 0, 0, 32, 4, site);
}

inline unsigned __ballot_sync(unsigned mask, int pred,
                              const std::source_location site = std::source_location::current()) {
  return static_cast<unsigned>(
      cuda_shim::warp_op(cuda_shim::WarpOp::kBallot, mask, pred != 0, 0, 32, 4, site));
}
inline int __all_sync(unsigned mask, int pred,
                      const std::source_location site = std::source_location::current()) {
  return static_cast<int>(
      cuda_shim::warp_op(cuda_shim::WarpOp::kAll, mask, pred != 0, 0, 32, 4, site));
}
inline int __any_sync(unsigned mask, int pred,
                      const std::source_location site = std::source_location::current()) {
  return static_cast<int>(
      cuda_shim::warp_op(cuda_shim::WarpOp::kAny, mask, pred != 0, 0, 32, 4, site));
}

// The four shuffles for each type CUDA overloads them for (sm_30_intrinsics.hpp); 8-byte
// values move as one unit, which equals CUDA's two 32-bit shuffles with the same lanes.
#define CUDA_SHIM_SHUFFLES(T)                                                                    \
  inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize,                \
                       const std::source_location site = std::source_location::current()) {     \
    return cuda_shim::shuffle(cuda_shim::WarpOp::kShflIdx, mask, var, src_lane, width, site);    \
  }                                                                                              \
  inline T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = warpSize,       \
                          const std::source_location site = std::source_location::current()) {  \
    return cuda_shim::shuffle(cuda_shim::WarpOp::kShflUp, mask, var, delta, width, site);        \
  }                                                                                              \
  inline T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = warpSize,     \
                            const std::source_location site = std::source_location::current()) { \
    return cuda_shim::shuffle(cuda_shim::WarpOp::kShflDown, mask, var, delta, width, site);      \
  }                                                                                              \
  inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize,           \
                           const std::source_location site = std::source_location::current()) { \
    return cuda_shim::shuffle(cuda_shim::WarpOp::kShflXor, mask, var, lane_mask, width, site);   \
  }

CUDA_SHIM_SHUFFLES(int)
CUDA_SHIM_SHUFFLES(unsigned int)
CUDA_SHIM_SHUFFLES(long)
CUDA_SHIM_SHUFFLES(unsigned long)
CUDA_SHIM_SHUFFLES(long long)
CUDA_SHIM_SHUFFLES(unsigned long long)
CUDA_SHIM_SHUFFLES(float)
CUDA_SHIM_SHUFFLES(double)
#undef CUDA_SHIM_SHUFFLES

// Memory fences: the emulated threads are real threads, so a real fence.
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T>
inline T __ldg(const T* p) { return *p; }

// Atomics (std::atomic_ref: the emulated threads of a block really run concurrently).
template <typename T>
inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v); }
template <typename T>
inline T atomicSub(T* p, T v) { return std::atomic_ref<T>(*p).fetch_sub(v); }
template <typename T>
inline T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v); }
template <typename T>
inline T atomicCAS(T* p, T expected, T desired) {
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
  return expected;  // the old value, whether or not the swap happened
}
template <typename T>
inline T atomicMax(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {}
  return old;
}
template <typename T>
inline T atomicMin(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {}
  return old;
}

// Bit reinterpretation and integer intrinsics.
inline float __int_as_float(int x) { return std::bit_cast<float>(x); }
inline int __float_as_int(float x) { return std::bit_cast<int>(x); }
inline float __uint_as_float(unsigned x) { return std::bit_cast<float>(x); }
inline unsigned __float_as_uint(float x) { return std::bit_cast<unsigned>(x); }
inline double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }
inline long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __clz(int x) { return std::countl_zero(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return std::countl_zero(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return x == 0 ? 0 : std::countr_zero(static_cast<unsigned>(x)) + 1; }

// CUDA's overloaded min/max (fmin/fmax semantics for floating point: a NaN operand is ignored).
template <typename A, typename B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
inline auto max(A a, B b) {
  using T = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<T>) return std::fmax(T(a), T(b));
  else return T(a) < T(b) ? T(b) : T(a);
}
template <typename A, typename B>
  requires std::is_arithmetic_v<A> && std::is_arithmetic_v<B>
inline auto min(A a, B b) {
  using T = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<T>) return std::fmin(T(a), T(b));
  else return T(b) < T(a) ? T(b) : T(a);
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x != x ? 0.0f : std::fmin(std::fmax(x, 0.0f), 1.0f); }

// Device-side assert and trap fail the launch (cudaErrorAssert on the GPU) instead of aborting
// the host process as the C library's assert would.
inline void __trap() { cuda_shim::trap("__trap()"); }
#undef assert
#define assert(e)                                                                               \
  ((e) ? (void)0                                                                                \
       : cuda_shim::trap(cuda_shim::fmt("device-side assert failed: %s at %s:%d", #e, __FILE__, \
                                        __LINE__)))

// The modelled math functions. The names are macros (defined last, after every library header)
// because the C library already declares expf(float) and exp(double) in the global namespace.
inline float cuda_shim_expf(float x) { return cuda_shim::math::expf_(x); }
inline float cuda_shim_logf(float x) { return cuda_shim::math::logf_(x); }
inline float cuda_shim_exp(float x) { return cuda_shim::math::expf_(x); }  // CUDA's exp(float)
inline float cuda_shim_log(float x) { return cuda_shim::math::logf_(x); }
inline double cuda_shim_exp(double x) { return cuda_shim::math::exp_(x); }
inline double cuda_shim_log(double x) { return cuda_shim::math::log_(x); }
template <typename I>
  requires std::is_integral_v<I>
inline double cuda_shim_exp(I x) { return cuda_shim::math::exp_(static_cast<double>(x)); }
template <typename I>
  requires std::is_integral_v<I>
inline double cuda_shim_log(I x) { return cuda_shim::math::log_(static_cast<double>(x)); }
inline float cuda_shim_fast_expf(float x) { return cuda_shim::math::fast_expf(x); }
inline float cuda_shim_fast_logf(float x) { return cuda_shim::math::fast_logf(x); }
#define expf cuda_shim_expf
#define logf cuda_shim_logf
#define exp cuda_shim_exp
#define log cuda_shim_log
#define __expf cuda_shim_fast_expf
#define __logf cuda_shim_fast_logf

// The other float32 functions of CUDA's math library that kernels commonly use: the C library's
// result, with -ftz=true's flush of a float32 subnormal argument and result. MXCSR's DAZ/FTZ only
// act on SSE arithmetic: glibc's log1pf and fabsf return a subnormal argument as it is (they look
// at its bits), where CUDA's -ftz code reads it as zero (tanhf and expm1f happen to flush under
// DAZ). Their accuracy is not modelled (CUDA: tanhf 2 ulp, log1pf 1, expm1f 1, sqrtf and fabsf
// exact). The double versions are the C library's, unflushed, as -ftz leaves doubles alone.
#define CUDA_SHIM_FLUSHED_UNARY(name)                                                           \
  inline float cuda_shim_##name##f(float x) {                                                   \
    return cuda_shim::math::flush(::name##f(cuda_shim::math::flush(x)));                        \
  }                                                                                             \
  inline float cuda_shim_##name(float x) { return cuda_shim_##name##f(x); }                     \
  inline double cuda_shim_##name(double x) { return ::name(x); }                                \
  template <typename I>                                                                         \
    requires std::is_integral_v<I>                                                              \
  inline double cuda_shim_##name(I x) { return ::name(static_cast<double>(x)); }
CUDA_SHIM_FLUSHED_UNARY(tanh)
CUDA_SHIM_FLUSHED_UNARY(log1p)
CUDA_SHIM_FLUSHED_UNARY(expm1)
CUDA_SHIM_FLUSHED_UNARY(sqrt)
CUDA_SHIM_FLUSHED_UNARY(fabs)
#undef CUDA_SHIM_FLUSHED_UNARY
#define tanhf cuda_shim_tanhf
#define tanh cuda_shim_tanh
#define log1pf cuda_shim_log1pf
#define log1p cuda_shim_log1p
#define expm1f cuda_shim_expm1f
#define expm1 cuda_shim_expm1
#define sqrtf cuda_shim_sqrtf
#define sqrt cuda_shim_sqrt
#define fabsf cuda_shim_fabsf
#define fabs cuda_shim_fabs

// ---------------------------------------------------------------------------------------------
// Exporting kernels and the C entry points used by emulate.py
// ---------------------------------------------------------------------------------------------

#define CUDA_SHIM_CAT2(a, b) a##b
#define CUDA_SHIM_CAT(a, b) CUDA_SHIM_CAT2(a, b)
// CUDA_SHIM_EXPORT(name) or CUDA_SHIM_EXPORT(name<float, 4>): make a kernel launchable by name.
#define CUDA_SHIM_EXPORT(...)                                                                   \
  static const ::cuda_shim::Registrar CUDA_SHIM_CAT(cuda_shim_export_, __COUNTER__)(            \
      #__VA_ARGS__, ::cuda_shim::Invoker<&__VA_ARGS__>::signature(),                            \
      ::cuda_shim::Arity<decltype(&__VA_ARGS__)>::value, &::cuda_shim::Invoker<&__VA_ARGS__>::call);

#define CUDA_SHIM_API extern "C" __attribute__((visibility("default")))

// Mirrors ctypes.Structure _LaunchConfig in emulate.py.
struct CudaShimLaunchConfig {
  uint32_t grid[3];
  uint32_t block[3];
  double timeout_s;        // fail when no thread makes progress for this long
  int32_t ftz_arith;       // set MXCSR FTZ/DAZ in the emulated threads
  int32_t ftz_math;        // flush float32 subnormals in the modelled math functions
  int32_t math_model;      // cuda_shim::math::Model
  int32_t reverse_blocks;  // run the blocks last to first
};

// The comma-separated names of the exported kernels.
CUDA_SHIM_API int cuda_shim_kernel_names(char* out, size_t cap) {
  std::string s;
  for (const cuda_shim::KernelInfo& k : cuda_shim::registry()) s += (s.empty() ? "" : ",") + k.name;
  cuda_shim::copy_out(s, out, cap);
  return static_cast<int>(cuda_shim::registry().size());
}

// The parameter type codes of one kernel (cuda_shim::type_code), or kUnknownKernel.
CUDA_SHIM_API int cuda_shim_signature(const char* kernel, char* out, size_t cap) {
  const cuda_shim::KernelInfo* k = cuda_shim::find_kernel(kernel);
  if (k == nullptr) return cuda_shim::kUnknownKernel;
  cuda_shim::copy_out(k->signature, out, cap);
  return cuda_shim::kOk;
}

// Run one launch to completion. args: one pointer per kernel parameter to that argument's bytes.
// Returns a cuda_shim::Status; on failure `message` says what happened.
CUDA_SHIM_API int cuda_shim_launch(const char* kernel, const CudaShimLaunchConfig* cfg,
                                   void* const* args, int n_args, char* message, size_t cap) {
  using namespace cuda_shim;
  const KernelInfo* k = find_kernel(kernel);
  if (k == nullptr) {
    copy_out(fmt("no kernel named '%s' in this module", kernel), message, cap);
    return kUnknownKernel;
  }
  if (n_args != static_cast<int>(k->n_params)) {
    copy_out(fmt("kernel '%s' takes %u arguments, got %d", kernel, k->n_params, n_args), message,
             cap);
    return kBadArgs;
  }
  const dim3 grid(cfg->grid[0], cfg->grid[1], cfg->grid[2]);
  const dim3 block(cfg->block[0], cfg->block[1], cfg->block[2]);
  // The limits of every GPU since compute capability 3.0 (a launch beyond them fails).
  const unsigned long long threads = 1ull * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0 ||
      block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024 ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    copy_out(fmt("invalid launch configuration: grid (%u,%u,%u), block (%u,%u,%u) (at most 1024 "
                 "threads per block, block.z <= 64, grid.y and grid.z <= 65535)",
                 grid.x, grid.y, grid.z, block.x, block.y, block.z),
             message, cap);
    return kBadLaunch;
  }
  // Shared memory is static storage of this library image: one launch at a time per image.
  static Mutex one_launch_at_a_time;
  Lock lk(one_launch_at_a_time);
  Launch L(static_cast<unsigned>(threads));
  L.kernel = k;
  L.grid = grid;
  L.block = block;
  L.args = args;
  L.timeout_s = cfg->timeout_s;
  L.ftz_arith = cfg->ftz_arith != 0;
  L.ftz_math = cfg->ftz_math != 0;
  L.math_model = cfg->math_model;
  L.reverse_blocks = cfg->reverse_blocks != 0;
  const int status = run_launch(L);
  copy_out(L.message, message, cap);
  return status;
}

// Guarded memory for array arguments: `bytes` of read-write memory whose end touches an
// inaccessible page (and with one before the rounded-up start), so the first access past the
// end faults. Returns the start of the data, or nullptr. Free with cuda_shim_guarded_free.
CUDA_SHIM_API void* cuda_shim_guarded_alloc(size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t data_pages = (bytes + page - 1) / page;
  const size_t total = (data_pages + 2) * page;
  void* base = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return nullptr;
  char* data_begin = static_cast<char*>(base) + page;
  if (data_pages > 0 && mprotect(data_begin, data_pages * page, PROT_READ | PROT_WRITE) != 0) {
    munmap(base, total);
    return nullptr;
  }
  return data_begin + data_pages * page - bytes;  // the data ends at the trailing guard page
}

CUDA_SHIM_API void cuda_shim_guarded_free(void* data, size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t data_pages = (bytes + page - 1) / page;
  char* data_end = static_cast<char*>(data) + bytes;  // page aligned
  munmap(data_end - data_pages * page - page, (data_pages + 2) * page);
}
