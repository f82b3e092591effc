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

// [sum(s0), sum(s1), sum(s2), sum(s3)] of four vectors of 4 x u64.
__attribute__((target("avx2"))) inline __m256i hsum4(__m256i s0, __m256i s1, __m256i s2,
                                                     __m256i s3) {
  __m256i t0 = _mm256_add_epi64(_mm256_unpacklo_epi64(s0, s1), _mm256_unpackhi_epi64(s0, s1));
  __m256i t1 = _mm256_add_epi64(_mm256_unpacklo_epi64(s2, s3), _mm256_unpackhi_epi64(s2, s3));
  return _mm256_add_epi64(_mm256_permute2x128_si256(t0, t1, 0x20),
                          _mm256_permute2x128_si256(t0, t1, 0x31));
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
  // tot[r] holds 64-bit totals for columns c0..c0+3 of row r (NR is 1 or a multiple of 4).
  static_assert(NR == 1 || NR % 4 == 0, "NR must be 1 or a multiple of 4");
  constexpr int NG = (NR + 3) / 4;
  __m256i tot[MR][NG];
  for (int r = 0; r < MR; ++r)
    for (int g = 0; g < NG; ++g) tot[r][g] = _mm256_setzero_si256();
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
    const __m256i zero = _mm256_setzero_si256();
    for (int r = 0; r < MR; ++r) {
      if constexpr (NR == 1) {
        tot[r][0] = _mm256_add_epi64(tot[r][0], _mm256_sad_epu8(acc[r][0], zero));
      } else {
        for (int g = 0; g < NG; ++g) tot[r][g] = _mm256_add_epi64(tot[r][g], hsum4(
            _mm256_sad_epu8(acc[r][4 * g], zero), _mm256_sad_epu8(acc[r][4 * g + 1], zero),
            _mm256_sad_epu8(acc[r][4 * g + 2], zero), _mm256_sad_epu8(acc[r][4 * g + 3], zero)));
      }
    }
  }
  if constexpr (NR % 4 == 0) {
    if (8 * nv == kw) {  // no tail words: finish in vector registers, 4 outputs per store
      const __m256i kk = _mm256_set1_epi64x(k), even = _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0);
      for (int r = 0; r < MR; ++r)
        for (int g = 0; g < NG; ++g) {
          __m256i res = _mm256_sub_epi64(kk, _mm256_slli_epi64(tot[r][g], 1));
          res = _mm256_permutevar8x32_epi32(res, even);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(out + r * n + 4 * g),
                           _mm256_castsi256_si128(res));
        }
      return;
    }
  }
  for (int r = 0; r < MR; ++r) {
    alignas(32) int64_t p[4 * NG];
    for (int g = 0; g < NG; ++g) _mm256_store_si256(reinterpret_cast<__m256i*>(p + 4 * g), tot[r][g]);
    if constexpr (NR == 1) p[0] = p[0] + p[1] + p[2] + p[3];
    for (int c = 0; c < NR; ++c) {
      const int64_t pc = p[c] + tail_popc(a + r * kw, b + c * kw, 8 * nv, kw);
      out[r * n + c] = static_cast<int32_t>(k - 2 * pc);
    }
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

// Rows [i0, i1) of the output: MRxNR register blocks (1-wide edges), with b split into column
// tiles of about L1_BYTES so a tile stays in L1 while every row block of a passes over it.
constexpr int64_t L1_BYTES = 16384;
#define BIPFT_ROWS(NAME, BLOCK, MR, NR)                                                      \
  void NAME(const uint32_t* a, const uint32_t* b, int64_t i0, int64_t i1, int64_t n,       \
            int64_t kw, int32_t* out, int64_t k) {                                         \
    const int64_t nt = std::max<int64_t>(NR, L1_BYTES / (4 * kw + 1) / NR * NR);           \
    for (int64_t j0 = 0; j0 < n; j0 += nt) {                                               \
      const int64_t j1 = std::min(n, j0 + nt);                                             \
      int64_t i = i0;                                                                      \
      for (; i + MR <= i1; i += MR) {                                                      \
        const uint32_t* ai = a + i * kw;                                                   \
        int64_t j = j0;                                                                    \
        for (; j + NR <= j1; j += NR) BLOCK<MR, NR>(ai, b + j * kw, kw, n, out + i * n + j, k); \
        for (; j < j1; ++j) BLOCK<MR, 1>(ai, b + j * kw, kw, n, out + i * n + j, k);        \
      }                                                                                    \
      for (; i < i1; ++i)                                                                  \
        for (int64_t j = j0; j < j1; ++j)                                                  \
          BLOCK<1, 1>(a + i * kw, b + j * kw, kw, n, out + i * n + j, k);                  \
    }                                                                                      \
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
  // $BIPFT_XNOR_THREADS caps the threads (1: no thread is spawned per call, which is steadier
  // on a loaded machine and leaves XLA's own pool the other cores).
  static const int64_t max_threads = [] {
    const char* env = std::getenv("BIPFT_XNOR_THREADS");
    int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
    return env ? std::max<int64_t>(1, std::min<int64_t>(hw, std::atoll(env))) : hw;
  }();
  int64_t threads = max_threads;
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
