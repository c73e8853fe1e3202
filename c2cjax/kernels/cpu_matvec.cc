// Small-batch matrix-vector products on CPU for batch-1 decode: an XLA FFI custom call.
//
// y[M, N] = x[M, K] . w, with w stored [K, N] ("in, out": c2cjax's layout) or [N, K]
// ("out, in": the tied embedding as LM head). M is small (decode: batch x 1 token).
// x and y are fp32; w is fp32 (C2cjaxCpuMatVec) or bfloat16 (C2cjaxCpuMatVecBf16: half the
// bytes to stream, each weight widened to fp32 before its multiply-add).
//
// Why hand-written: XLA:CPU's matrix-vector products on decode-sized matrices (576 x 1536
// and smaller) stream the weights well below the machine's read bandwidth; this kernel
// splits each product into contiguous blocks of rows that XLA's own intra-op thread pool
// (ffi::ThreadPool) and the calling thread claim from an atomic counter, so every core
// streams memory. The caller only ever waits for blocks that a running thread has claimed,
// so a busy pool cannot deadlock it (it then does all blocks itself).
// Measurements: benchmarks/RESULTS.md (issue 16, tenth session).

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// A stored weight as fp32: itself, or a bfloat16's bits as the top half of an fp32 (exact).
inline float widen(float v) { return v; }
inline float widen(uint16_t v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// acc[m, :] += sum_{i in [r0, r1)} x[m, i] * w[i, :]   (w is [K, N]; acc is [M, N]).
template <typename W>
void rows_in_out(const float* __restrict x, const W* __restrict w, float* __restrict acc,
                 int64_t M, int64_t K, int64_t N, int64_t r0, int64_t r1) {
  int64_t i = r0;
  for (; i + 4 <= r1; i += 4) {
    const W* w0 = w + i * N;
    const W* w1 = w0 + N;
    const W* w2 = w1 + N;
    const W* w3 = w2 + N;
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = x + m * K + i;
      const float a0 = xm[0], a1 = xm[1], a2 = xm[2], a3 = xm[3];
      float* __restrict y = acc + m * N;
#pragma GCC ivdep
      for (int64_t j = 0; j < N; ++j) {
        y[j] += a0 * widen(w0[j]) + a1 * widen(w1[j]) + a2 * widen(w2[j]) + a3 * widen(w3[j]);
      }
    }
  }
  for (; i < r1; ++i) {
    const W* w0 = w + i * N;
    for (int64_t m = 0; m < M; ++m) {
      const float a0 = x[m * K + i];
      float* __restrict y = acc + m * N;
#pragma GCC ivdep
      for (int64_t j = 0; j < N; ++j) y[j] += a0 * widen(w0[j]);
    }
  }
}

// y[m, o] = dot(w[o, :], x[m, :]) for o in [r0, r1)   (w is [N, K]; y is [M, N]).
template <typename W>
void rows_out_in(const float* __restrict x, const W* __restrict w, float* __restrict y,
                 int64_t M, int64_t K, int64_t N, int64_t r0, int64_t r1) {
  for (int64_t o = r0; o < r1; ++o) {
    const W* wo = w + o * K;
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = x + m * K;
      float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
      int64_t i = 0;
      // Four independent partial sums let the compiler keep four vector accumulators.
      for (; i + 64 <= K; i += 64) {
#pragma GCC ivdep
        for (int64_t j = 0; j < 16; ++j) s0 += widen(wo[i + j]) * xm[i + j];
#pragma GCC ivdep
        for (int64_t j = 16; j < 32; ++j) s1 += widen(wo[i + j]) * xm[i + j];
#pragma GCC ivdep
        for (int64_t j = 32; j < 48; ++j) s2 += widen(wo[i + j]) * xm[i + j];
#pragma GCC ivdep
        for (int64_t j = 48; j < 64; ++j) s3 += widen(wo[i + j]) * xm[i + j];
      }
      for (; i < K; ++i) s0 += widen(wo[i]) * xm[i];
      y[m * N + o] = (s0 + s1) + (s2 + s3);
    }
  }
}

template <typename W>
struct Job {
  const float* x;
  const W* w;
  float* y;
  int64_t M, K, N, blocks, rows;
  bool out_in;
  std::vector<float> partial;  // in-out only: blocks x M x N partial sums
  std::atomic<int64_t> next{0}, done{0};

  void work() {
    for (;;) {
      const int64_t b = next.fetch_add(1, std::memory_order_relaxed);
      if (b >= blocks) return;
      const int64_t r0 = b * rows;
      const int64_t r1 = r0 + rows < (out_in ? N : K) ? r0 + rows : (out_in ? N : K);
      if (out_in) {
        rows_out_in(x, w, y, M, K, N, r0, r1);
      } else {
        rows_in_out(x, w, partial.data() + b * M * N, M, K, N, r0, r1);
      }
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

template <ffi::DataType T>
ffi::Error MatVec(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<T> w,
                  ffi::ResultBuffer<ffi::F32> y, bool out_in, int64_t blocks_per_thread) {
  using W = ffi::NativeType<T>;
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 2) {
    return ffi::Error::InvalidArgument("c2cjax_cpu_matvec: x and w must be 2-D");
  }
  const int64_t M = xd[0], K = xd[1];
  const int64_t N = out_in ? wd[0] : wd[1];
  if ((out_in ? wd[1] : wd[0]) != K) {
    return ffi::Error::InvalidArgument("c2cjax_cpu_matvec: x and w disagree on K");
  }
  auto job = std::make_shared<Job<W>>();
  job->x = x.typed_data();
  job->w = w.typed_data();
  job->y = y->typed_data();
  job->M = M;
  job->K = K;
  job->N = N;
  job->out_in = out_in;
  const int64_t threads = pool.num_threads() > 0 ? pool.num_threads() : 1;
  const int64_t rows_total = out_in ? N : K;
  int64_t want = threads * (blocks_per_thread > 0 ? blocks_per_thread : 1);
  if (want > rows_total) want = rows_total > 0 ? rows_total : 1;
  job->rows = (rows_total + want - 1) / want;
  if (job->rows < 1) job->rows = 1;
  job->blocks = rows_total > 0 ? (rows_total + job->rows - 1) / job->rows : 0;
  if (!out_in) job->partial.assign(job->blocks * M * N, 0.0f);
  int64_t helpers = threads - 1 < job->blocks - 1 ? threads - 1 : job->blocks - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { job->work(); });
  job->work();
  while (job->done.load(std::memory_order_acquire) < job->blocks) cpu_relax();
  if (!out_in) {
    float* out = job->y;
    if (job->blocks == 0) {
      std::memset(out, 0, sizeof(float) * M * N);
    } else {
      std::memcpy(out, job->partial.data(), sizeof(float) * M * N);
      for (int64_t b = 1; b < job->blocks; ++b) {
        const float* p = job->partial.data() + b * M * N;
        for (int64_t j = 0; j < M * N; ++j) out[j] += p[j];
      }
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(C2cjaxCpuMatVec, MatVec<ffi::F32>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("out_in")
                                  .Attr<int64_t>("blocks_per_thread"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(C2cjaxCpuMatVecBf16, MatVec<ffi::BF16>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("out_in")
                                  .Attr<int64_t>("blocks_per_thread"));
