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

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define C2CJAX_SIMD 1
#include <immintrin.h>
#endif

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

// Explicit SIMD for the inner loops. Without -ffast-math the compiler may not reorder a
// float sum, so it left the dot products of rows_out_in scalar and the bf16 widening
// narrow: measured 2 and 8 G weights/s per core against the 15-30 the read allows
// (RESULTS.md, sixteenth session). The portable loops stay for other CPUs and tails.
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
using Vec = __m512;
inline Vec vzero() { return _mm512_setzero_ps(); }
inline Vec vset(float a) { return _mm512_set1_ps(a); }
inline Vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline Vec vload(const uint16_t* p) {  // 16 bfloat16 -> fp32: the bits shifted up, exact
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
inline void vstore(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm512_add_ps(a, b); }
inline float vsum(Vec v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t kLanes = 8;
using Vec = __m256;
inline Vec vzero() { return _mm256_setzero_ps(); }
inline Vec vset(float a) { return _mm256_set1_ps(a); }
inline Vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline Vec vload(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline void vstore(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec vfma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline Vec vadd(Vec a, Vec b) { return _mm256_add_ps(a, b); }
inline float vsum(Vec v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}
#else
constexpr int64_t kLanes = 0;  // no SIMD path: the portable loops below do all the work
#endif

// bf16 rows: ask for the weights 512 bytes ahead. One core's stream from memory stalls
// on the widening's extra instructions; in paired rounds over SmolLM2's weights this was
// 1.2-3.3 ms a token faster (22 of 24 rounds), and no faster for fp32 (RESULTS.md).
template <typename W>
inline void prefetch_ahead(const W* p) {
#ifdef C2CJAX_SIMD
  if (sizeof(W) == 2) _mm_prefetch(reinterpret_cast<const char*>(p) + 512, _MM_HINT_T0);
#endif
}

// acc[m, :] += sum_{i in [r0, r1)} x[m, i] * w[i, :]   (w is [K, N]; acc is [M, N]).
template <typename W>
void rows_in_out(const float* __restrict x, const W* __restrict w, float* __restrict acc,
                 int64_t M, int64_t K, int64_t N, int64_t r0, int64_t r1) {
  const int64_t nv = kLanes > 0 ? N / kLanes * kLanes : 0;  // columns done in SIMD
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
#ifdef C2CJAX_SIMD
      const Vec b0 = vset(a0), b1 = vset(a1), b2 = vset(a2), b3 = vset(a3);
      for (int64_t j = 0; j < nv; j += kLanes) {
        prefetch_ahead(w0 + j);
        prefetch_ahead(w1 + j);
        prefetch_ahead(w2 + j);
        prefetch_ahead(w3 + j);
        Vec s = vfma(b0, vload(w0 + j), vload(y + j));
        s = vfma(b1, vload(w1 + j), s);
        s = vfma(b2, vload(w2 + j), s);
        vstore(y + j, vfma(b3, vload(w3 + j), s));
      }
#endif
#pragma GCC ivdep
      for (int64_t j = nv; j < N; ++j) {
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
      int64_t i = 0;
      float s = 0.f;
#ifdef C2CJAX_SIMD
      // Four vector accumulators hide the multiply-add latency.
      Vec s0 = vzero(), s1 = vzero(), s2 = vzero(), s3 = vzero();
      for (; i + 4 * kLanes <= K; i += 4 * kLanes) {
        prefetch_ahead(wo + i);
        s0 = vfma(vload(wo + i), vload(xm + i), s0);
        s1 = vfma(vload(wo + i + kLanes), vload(xm + i + kLanes), s1);
        s2 = vfma(vload(wo + i + 2 * kLanes), vload(xm + i + 2 * kLanes), s2);
        s3 = vfma(vload(wo + i + 3 * kLanes), vload(xm + i + 3 * kLanes), s3);
      }
      for (; i + kLanes <= K; i += kLanes) s0 = vfma(vload(wo + i), vload(xm + i), s0);
      s = vsum(vadd(vadd(s0, s1), vadd(s2, s3)));
#else
      // Four independent partial sums, for the latency of the adds.
      float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
      for (; i + 4 <= K; i += 4) {
        s0 += widen(wo[i]) * xm[i];
        s1 += widen(wo[i + 1]) * xm[i + 1];
        s2 += widen(wo[i + 2]) * xm[i + 2];
        s3 += widen(wo[i + 3]) * xm[i + 3];
      }
      s = (s0 + s1) + (s2 + s3);
#endif
      for (; i < K; ++i) s += widen(wo[i]) * xm[i];
      y[m * N + o] = s;
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

// y = x . w for one weight matrix; K, N as in the header comment.
template <typename W>
void Product(ffi::ThreadPool& pool, const float* x, const W* w, float* y, int64_t M,
             int64_t K, int64_t N, bool out_in, int64_t blocks_per_thread) {
  auto job = std::make_shared<Job<W>>();
  job->x = x;
  job->w = w;
  job->y = y;
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
    if (job->blocks == 0) {
      std::memset(y, 0, sizeof(float) * M * N);
    } else {
      std::memcpy(y, job->partial.data(), sizeof(float) * M * N);
      for (int64_t b = 1; b < job->blocks; ++b) {
        const float* p = job->partial.data() + b * M * N;
        for (int64_t j = 0; j < M * N; ++j) y[j] += p[j];
      }
    }
  }
}

template <ffi::DataType T>
ffi::Error MatVec(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<T> w,
                  ffi::ResultBuffer<ffi::F32> y, bool out_in, int64_t blocks_per_thread) {
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
  Product(pool, x.typed_data(), w.typed_data(), y->typed_data(), M, K, N, out_in,
          blocks_per_thread);
  return ffi::Error::Success();
}

// The same product with layer ``index`` of weights stacked [L, K, N] (or [L, N, K]), read
// in place: inside a loop over layers XLA would otherwise copy each layer's slice out of
// the stacked array before the product (benchmarks/RESULTS.md, sixteenth session).
template <ffi::DataType T>
ffi::Error MatVecAt(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<T> w,
                    ffi::Buffer<ffi::S32> index, ffi::ResultBuffer<ffi::F32> y, bool out_in,
                    int64_t blocks_per_thread) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() != 3 || index.element_count() != 1) {
    return ffi::Error::InvalidArgument(
        "c2cjax_cpu_matvec_at: x must be 2-D, w 3-D (stacked layers), index one int32");
  }
  const int64_t M = xd[0], K = xd[1], L = wd[0];
  const int64_t N = out_in ? wd[1] : wd[2];
  if ((out_in ? wd[2] : wd[1]) != K) {
    return ffi::Error::InvalidArgument("c2cjax_cpu_matvec_at: x and w disagree on K");
  }
  const int64_t i = index.typed_data()[0];
  if (i < 0 || i >= L) {
    return ffi::Error::InvalidArgument("c2cjax_cpu_matvec_at: layer index out of range");
  }
  Product(pool, x.typed_data(), w.typed_data() + i * K * N, y->typed_data(), M, K, N, out_in,
          blocks_per_thread);
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(C2cjaxCpuMatVecAt, MatVecAt<ffi::F32>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("out_in")
                                  .Attr<int64_t>("blocks_per_thread"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(C2cjaxCpuMatVecBf16At, MatVecAt<ffi::BF16>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("out_in")
                                  .Attr<int64_t>("blocks_per_thread"));
