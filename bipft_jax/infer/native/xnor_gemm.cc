// XNOR-popcount GEMM for XLA CPU via the typed FFI:
//   out[i, j] = k - 2 * popcount(a[i, :] ^ b[j, :])      a: u32[M, Kw], b: u32[N, Kw], out: s32[M, N]
// Padding bits must be 0 in both operands (see bipft_jax/infer/packing.py).
// Paths, chosen at run time: AVX-512 VPOPCNTDQ (zmm vpopcntq), AVX2 (vpshufb nibble LUT +
// vpsadbw), scalar popcnt. Rows of `a` are split across hardware threads.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using RowFn = void (*)(const uint32_t*, const uint32_t*, int64_t, int64_t, int64_t, int64_t,
                       int32_t*, int64_t);

// Scalar popcount of words [w0, kw) of one pair of rows.
inline int64_t tail_popc(const uint32_t* a, const uint32_t* b, int64_t w0, int64_t kw) {
  int64_t s = 0;
  for (int64_t w = w0; w < kw; ++w) s += __builtin_popcount(a[w] ^ b[w]);
  return s;
}

void rows_scalar(const uint32_t* a, const uint32_t* b, int64_t i0, int64_t i1, int64_t n,
                 int64_t kw, int32_t* out, int64_t k) {
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t j = 0; j < n; ++j)
      out[i * n + j] = static_cast<int32_t>(k - 2 * tail_popc(a + i * kw, b + j * kw, 0, kw));
}

// ---- AVX2: 256-bit vectors of 8 words; byte counts accumulated, flushed with vpsadbw. ----
__attribute__((target("avx2"))) inline __m256i popc_bytes(__m256i v, __m256i lut, __m256i low) {
  __m256i lo = _mm256_and_si256(v, low);
  __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
  return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

__attribute__((target("avx2"))) inline int64_t hsum_sad(__m256i bytes) {
  __m256i s = _mm256_sad_epu8(bytes, _mm256_setzero_si256());
  __m128i t = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  return _mm_cvtsi128_si64(t) + _mm_extract_epi64(t, 1);
}

// MR rows of a x NR rows of b; each byte lane gains <= 8 per vector, so flush every 31 vectors.
template <int MR, int NR>
__attribute__((target("avx2"))) inline void block_avx2(const uint32_t* a, const uint32_t* b,
                                                       int64_t kw, int64_t n, int32_t* out,
                                                       int64_t k) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2,
                                       1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  const int64_t nv = kw / 8;
  int64_t tot[MR][NR] = {};
  for (int64_t v0 = 0; v0 < nv; v0 += 31) {
    const int64_t v1 = std::min(nv, v0 + 31);
    __m256i acc[MR][NR];
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NR; ++c) acc[r][c] = _mm256_setzero_si256();
    for (int64_t v = v0; v < v1; ++v) {
      __m256i av[MR];
      for (int r = 0; r < MR; ++r)
        av[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + r * kw + 8 * v));
      for (int c = 0; c < NR; ++c) {
        __m256i bv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + c * kw + 8 * v));
        for (int r = 0; r < MR; ++r)
          acc[r][c] = _mm256_add_epi8(acc[r][c], popc_bytes(_mm256_xor_si256(av[r], bv), lut, low));
      }
    }
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NR; ++c) tot[r][c] += hsum_sad(acc[r][c]);
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) {
      int64_t p = tot[r][c] + tail_popc(a + r * kw, b + c * kw, 8 * nv, kw);
      out[r * n + c] = static_cast<int32_t>(k - 2 * p);
    }
}

// ---- AVX-512 VPOPCNTDQ: 512-bit vectors of 16 words, 64-bit lane counts. ----
template <int MR, int NR>
__attribute__((target("avx512f,avx512vpopcntdq"))) inline void block_avx512(
    const uint32_t* a, const uint32_t* b, int64_t kw, int64_t n, int32_t* out, int64_t k) {
  const int64_t nv = kw / 16;
  __m512i acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) acc[r][c] = _mm512_setzero_si512();
  for (int64_t v = 0; v < nv; ++v) {
    __m512i av[MR];
    for (int r = 0; r < MR; ++r) av[r] = _mm512_loadu_si512(a + r * kw + 16 * v);
    for (int c = 0; c < NR; ++c) {
      __m512i bv = _mm512_loadu_si512(b + c * kw + 16 * v);
      for (int r = 0; r < MR; ++r)
        acc[r][c] = _mm512_add_epi64(acc[r][c], _mm512_popcnt_epi64(_mm512_xor_si512(av[r], bv)));
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) {
      int64_t p = _mm512_reduce_add_epi64(acc[r][c]) + tail_popc(a + r * kw, b + c * kw, 16 * nv, kw);
      out[r * n + c] = static_cast<int32_t>(k - 2 * p);
    }
}

// Rows [i0, i1) of the output with MRxNR register blocks and 1-wide edges.
#define BIPFT_ROWS(NAME, BLOCK, MR, NR)                                                          \
  void NAME(const uint32_t* a, const uint32_t* b, int64_t i0, int64_t i1, int64_t n,           \
            int64_t kw, int32_t* out, int64_t k) {                                             \
    int64_t i = i0;                                                                            \
    for (; i + MR <= i1; i += MR) {                                                            \
      int64_t j = 0;                                                                           \
      for (; j + NR <= n; j += NR) BLOCK<MR, NR>(a + i * kw, b + j * kw, kw, n, out + i * n + j, k); \
      for (; j < n; ++j) BLOCK<MR, 1>(a + i * kw, b + j * kw, kw, n, out + i * n + j, k);       \
    }                                                                                          \
    for (; i < i1; ++i)                                                                        \
      for (int64_t j = 0; j < n; ++j) BLOCK<1, 1>(a + i * kw, b + j * kw, kw, n, out + i * n + j, k); \
  }

__attribute__((target("avx2"))) BIPFT_ROWS(rows_avx2, block_avx2, 2, 4)
__attribute__((target("avx512f,avx512vpopcntdq"))) BIPFT_ROWS(rows_avx512, block_avx512, 4, 4)

RowFn pick() {
  const char* force = std::getenv("BIPFT_XNOR_ISA");  // "avx512", "avx2" or "scalar"
  std::string want = force ? force : "";
  __builtin_cpu_init();
  bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
  bool has2 = __builtin_cpu_supports("avx2");
  if ((want.empty() || want == "avx512") && has512) return rows_avx512;
  if ((want.empty() || want == "avx2" || want == "avx512") && has2) return rows_avx2;
  return rows_scalar;
}

ffi::Error XnorGemmImpl(ffi::Buffer<ffi::U32> a, ffi::Buffer<ffi::U32> b,
                        ffi::ResultBuffer<ffi::S32> out, int64_t k) {
  auto ad = a.dimensions(), bd = b.dimensions();
  if (ad.size() != 2 || bd.size() != 2 || ad[1] != bd[1])
    return ffi::Error::InvalidArgument("bipft_xnor_gemm: expected a[M, Kw] and b[N, Kw]");
  const int64_t m = ad[0], n = bd[0], kw = ad[1];
  static const RowFn rows = pick();
  const int64_t work = m * n * kw;
  int64_t threads = std::max<int64_t>(1, std::thread::hardware_concurrency());
  threads = std::min<int64_t>({threads, m, std::max<int64_t>(1, work / (1 << 16))});
  const uint32_t* ap = a.typed_data();
  const uint32_t* bp = b.typed_data();
  int32_t* op = out->typed_data();
  const int64_t step = (m + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t i0 = t * step, i1 = std::min(m, i0 + step);
    if (i0 < i1) pool.emplace_back(rows, ap, bp, i0, i1, n, kw, op, k);
  }
  rows(ap, bp, 0, std::min(m, step), n, kw, op, k);
  for (auto& th : pool) th.join();
  return ffi::Error::Success();
}

}  // namespace

extern "C" const char* BipftXnorIsa() {
  RowFn r = pick();
  return r == rows_avx512 ? "avx512_vpopcntdq" : r == rows_avx2 ? "avx2" : "scalar";
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(BipftXnorGemm, XnorGemmImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<int64_t>("k"));
