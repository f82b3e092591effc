// 1-bit GEMMs and sign packing for XLA CPU via the typed FFI (a: u32[B, M, Kw], b: u32[N, Kw]
// shared by every batch, or u32[B, N, Kw]):
//   bipft_xnor_gemm:  out[t, i, j] = k - 2 * popcount(a[t, i, :] ^ b[(t,) j, :])   (s32[B, M, N])
//   bipft_and_gemm:   out[t, i, j] = popcount(a[t, i, :] & b[(t,) j, :])          (s32[B, M, N])
//   bipft_sign_pack:  f32[R, K] -> signs u32[R, Kw] (bit = x > 0), mask u32[R, Kw] (bit = x != 0)
// Padding bits are 0 in every plane (the layout of bipft_jax/infer/packing.py).
// GEMM paths, chosen at run time: AVX-512 VPOPCNTDQ (zmm vpopcntq), AVX2 (vpshufb nibble LUT +
// vpsadbw), scalar popcnt. Row chunks are shared by the calling thread and XLA's intra-op pool.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum class Op { kXor, kAnd };

// (a, b, nibble planes of b or null, i0, i1, n, kw, out, k): output rows [i0, i1).
using RowFn = void (*)(const uint32_t*, const uint32_t*, const __m256i*, int64_t, int64_t,
                       int64_t, int64_t, int32_t*, int64_t);

template <Op OP>
inline uint32_t combine(uint32_t a, uint32_t b) {
  return OP == Op::kXor ? a ^ b : a & b;
}

// The output of a popcount p: k - 2p (XNOR dot product) or p itself (AND count).
template <Op OP>
inline int32_t finish(int64_t p, int64_t k) {
  return static_cast<int32_t>(OP == Op::kXor ? k - 2 * p : p);
}

// Scalar popcount of words [w0, kw) of one pair of rows.
template <Op OP>
inline int64_t tail_popc(const uint32_t* a, const uint32_t* b, int64_t w0, int64_t kw) {
  int64_t s = 0;
  for (int64_t w = w0; w < kw; ++w) s += __builtin_popcount(combine<OP>(a[w], b[w]));
  return s;
}

template <Op OP>
void rows_scalar(const uint32_t* a, const uint32_t* b, const __m256i*, int64_t i0, int64_t i1,
                 int64_t n, int64_t kw, int32_t* out, int64_t k) {
  for (int64_t i = i0; i < i1; ++i)
    for (int64_t j = 0; j < n; ++j)
      out[i * n + j] = finish<OP>(tail_popc<OP>(a + i * kw, b + j * kw, 0, kw), k);
}

// ---- AVX2: 256-bit vectors of 8 words; byte counts accumulated, flushed with vpsadbw. ----
template <Op OP>
__attribute__((target("avx2"))) inline __m256i combine256(__m256i a, __m256i b) {
  return OP == Op::kXor ? _mm256_xor_si256(a, b) : _mm256_and_si256(a, b);
}

// Popcount of each nibble value 0..15, in both 128-bit lanes (the vpshufb table).
__attribute__((target("avx2"))) inline __m256i nibble_popcounts() {
  return _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                          2, 2, 3, 2, 3, 3, 4);
}

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

// b's full vectors pre-split into nibble planes, once per call: (a ^ b) & 0x0f = (a & 0x0f) ^
// (b & 0x0f) and likewise for the high nibbles (and for &), so a product needs no shift or mask
// on b: 6 instead of 8 vector ops per 256 bits (measured 1.2-1.4x on BERT-base shapes).
// bn[(j * nv + v) * 2 + {0, 1}] = {low, high} nibbles of vector v of row j.
__attribute__((target("avx2"))) void split_nibbles(const uint32_t* b, int64_t n, int64_t kw,
                                                   __m256i* bn) {
  const __m256i low = _mm256_set1_epi8(0x0f);
  const int64_t nv = kw / 8;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t v = 0; v < nv; ++v) {
      __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + j * kw + 8 * v));
      _mm256_store_si256(bn + (j * nv + v) * 2, _mm256_and_si256(x, low));
      _mm256_store_si256(bn + (j * nv + v) * 2 + 1, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
    }
}

// One row of a x NR rows of b (NR = 1 or a multiple of 4); each byte lane gains <= 8 per
// vector, so byte counts are flushed to 64-bit totals every 31 vectors.
// SHORT: nv <= 31, one flush (the totals stay out of the loop).
// always_inline: as a call, GCC kept it out of line and 1.4x slower (measured).
template <int NR, Op OP, bool SHORT>
__attribute__((target("avx2,popcnt"), always_inline)) inline void block_avx2(
    const uint32_t* a, const uint32_t* b, const __m256i* bn, int64_t kw, int32_t* out, int64_t k) {
  static_assert(NR == 1 || NR % 4 == 0, "NR must be 1 or a multiple of 4");
  constexpr int NG = (NR + 3) / 4;
  const __m256i lut = nibble_popcounts();
  const __m256i low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
  const int64_t nv = kw / 8;
  __m256i tot[NG];  // tot[g]: 64-bit totals of columns 4g..4g+3 (NR == 1: 4 partial sums)
  for (int g = 0; g < NG; ++g) tot[g] = zero;
  for (int64_t v0 = 0; v0 < nv; v0 += 31) {
    const int64_t v1 = SHORT ? nv : std::min(nv, v0 + 31);
    __m256i acc[NR];
    for (int c = 0; c < NR; ++c) acc[c] = zero;
    for (int64_t v = v0; v < v1; ++v) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 8 * v));
      const __m256i lo = _mm256_and_si256(x, low);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
      for (int c = 0; c < NR; ++c) {
        const __m256i* q = bn + (c * nv + v) * 2;
        acc[c] = _mm256_add_epi8(acc[c], _mm256_add_epi8(
            _mm256_shuffle_epi8(lut, combine256<OP>(lo, _mm256_load_si256(q))),
            _mm256_shuffle_epi8(lut, combine256<OP>(hi, _mm256_load_si256(q + 1)))));
      }
    }
    if constexpr (NR == 1) {
      tot[0] = _mm256_add_epi64(tot[0], _mm256_sad_epu8(acc[0], zero));
    } else {
      for (int g = 0; g < NG; ++g) tot[g] = _mm256_add_epi64(tot[g], hsum4(
          _mm256_sad_epu8(acc[4 * g], zero), _mm256_sad_epu8(acc[4 * g + 1], zero),
          _mm256_sad_epu8(acc[4 * g + 2], zero), _mm256_sad_epu8(acc[4 * g + 3], zero)));
    }
  }
  if constexpr (NR % 4 == 0) {
    if (8 * nv == kw) {  // no tail words: finish in vector registers, 4 outputs per store
      const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0);
      for (int g = 0; g < NG; ++g) {
        __m256i res = tot[g];
        if constexpr (OP == Op::kXor)
          res = _mm256_sub_epi64(_mm256_set1_epi64x(k), _mm256_slli_epi64(res, 1));
        res = _mm256_permutevar8x32_epi32(res, even);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4 * g), _mm256_castsi256_si128(res));
      }
      return;
    }
  }
  alignas(32) int64_t p[4 * NG];
  for (int g = 0; g < NG; ++g) _mm256_store_si256(reinterpret_cast<__m256i*>(p + 4 * g), tot[g]);
  if constexpr (NR == 1) p[0] = p[0] + p[1] + p[2] + p[3];
  for (int c = 0; c < NR; ++c)
    out[c] = finish<OP>(p[c] + tail_popc<OP>(a, b + c * kw, 8 * nv, kw), k);
}

// Rows [i0, i1): blocks of 1 x 8 columns (1-wide edges), over column tiles of b's nibble
// planes of about L1_BYTES, so a tile stays in L1 while every row of a passes over it.
constexpr int64_t L1_BYTES = 16384;

template <Op OP>
__attribute__((target("avx2,popcnt"))) void rows_avx2(const uint32_t* a, const uint32_t* b,
                                                      const __m256i* bn, int64_t i0, int64_t i1,
                                                      int64_t n, int64_t kw, int32_t* out,
                                                      int64_t k) {
  constexpr int NR = 8;
  const int64_t nv = kw / 8;
  const int64_t nt = std::max<int64_t>(NR, L1_BYTES / (64 * nv + 4 * kw + 1) / NR * NR);
  for (int64_t j0 = 0; j0 < n; j0 += nt) {
    const int64_t j1 = std::min(n, j0 + nt);
    for (int64_t i = i0; i < i1; ++i) {
      int64_t j = j0;
      const uint32_t* ai = a + i * kw;
      int32_t* o = out + i * n;
      if (nv <= 31) {
        for (; j + NR <= j1; j += NR)
          block_avx2<NR, OP, true>(ai, b + j * kw, bn + 2 * j * nv, kw, o + j, k);
      } else {
        for (; j + NR <= j1; j += NR)
          block_avx2<NR, OP, false>(ai, b + j * kw, bn + 2 * j * nv, kw, o + j, k);
      }
      for (; j < j1; ++j) block_avx2<1, OP, false>(ai, b + j * kw, bn + 2 * j * nv, kw, o + j, k);
    }
  }
}

// ---- AVX-512 VPOPCNTDQ: 512-bit vectors of 16 words, 64-bit lane counts. ----
template <int MR, int NR, Op OP>
__attribute__((target("avx512f,avx512vpopcntdq,popcnt"), always_inline)) inline void block_avx512(
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
      for (int r = 0; r < MR; ++r) {
        __m512i x = OP == Op::kXor ? _mm512_xor_si512(av[r], bv) : _mm512_and_si512(av[r], bv);
        acc[r][c] = _mm512_add_epi64(acc[r][c], _mm512_popcnt_epi64(x));
      }
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) {
      int64_t p = _mm512_reduce_add_epi64(acc[r][c]);
      out[r * n + c] = finish<OP>(p + tail_popc<OP>(a + r * kw, b + c * kw, 16 * nv, kw), k);
    }
}

// Rows [i0, i1) of the output: 4x4 register blocks (1-wide edges), with b split into column
// tiles of about L1_BYTES so a tile stays in L1 while every row block of a passes over it.
template <Op OP>
__attribute__((target("avx512f,avx512vpopcntdq,popcnt"))) void rows_avx512(
    const uint32_t* a, const uint32_t* b, const __m256i*, int64_t i0, int64_t i1, int64_t n,
    int64_t kw, int32_t* out, int64_t k) {
  constexpr int MR = 4, NR = 4;
  const int64_t nt = std::max<int64_t>(NR, L1_BYTES / (4 * kw + 1) / NR * NR);
  for (int64_t j0 = 0; j0 < n; j0 += nt) {
    const int64_t j1 = std::min(n, j0 + nt);
    int64_t i = i0;
    for (; i + MR <= i1; i += MR) {
      const uint32_t* ai = a + i * kw;
      int64_t j = j0;
      for (; j + NR <= j1; j += NR)
        block_avx512<MR, NR, OP>(ai, b + j * kw, kw, n, out + i * n + j, k);
      for (; j < j1; ++j) block_avx512<MR, 1, OP>(ai, b + j * kw, kw, n, out + i * n + j, k);
    }
    for (; i < i1; ++i)
      for (int64_t j = j0; j < j1; ++j)
        block_avx512<1, 1, OP>(a + i * kw, b + j * kw, kw, n, out + i * n + j, k);
  }
}

// Short rows (Kw = L in {1, 2, 4} words, e.g. attention's head dim 64 or 128 keys): one vector
// holds R = 8 / L rows of b against one row of a broadcast to every lane, so no lane is idle.
template <int L>
__attribute__((target("avx2"))) inline __m256i broadcast_row(const uint32_t* a) {
  if constexpr (L == 1) return _mm256_set1_epi32(static_cast<int>(a[0]));
  if constexpr (L == 2) {
    int64_t v;
    std::memcpy(&v, a, 8);
    return _mm256_set1_epi64x(v);
  }
  return _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a)));
}

template <int L, Op OP>
__attribute__((target("avx2,popcnt"))) void rows_short_avx2(const uint32_t* a, const uint32_t* b,
                                                            const __m256i*, int64_t i0, int64_t i1,
                                                            int64_t n, int64_t kw, int32_t* out,
                                                            int64_t k) {
  constexpr int R = 8 / L;
  const __m256i lut = nibble_popcounts();
  const __m256i low = _mm256_set1_epi8(0x0f);
  const __m256i kk = _mm256_set1_epi32(static_cast<int>(k));
  const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0);
  for (int64_t i = i0; i < i1; ++i) {
    const __m256i av = broadcast_row<L>(a + i * L);
    int32_t* o = out + i * n;
    int64_t j = 0;
    for (; j + R <= n; j += R) {
      __m256i bv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + j * L));
      __m256i c = popc_bytes(combine256<OP>(av, bv), lut, low);
      __m256i p;  // 32-bit counts, one per row of b, in lanes 0..R-1
      if constexpr (L == 1) {
        p = _mm256_madd_epi16(_mm256_maddubs_epi16(c, _mm256_set1_epi8(1)), _mm256_set1_epi16(1));
      } else {
        __m256i q = _mm256_sad_epu8(c, _mm256_setzero_si256());  // 4 x u64
        if constexpr (L == 4) q = _mm256_add_epi64(q, _mm256_shuffle_epi32(q, 0x4E));
        if constexpr (L == 4) q = _mm256_permute4x64_epi64(q, 0x08);  // lanes 0, 2 -> 0, 1
        p = _mm256_permutevar8x32_epi32(q, even);
      }
      if constexpr (OP == Op::kXor) p = _mm256_sub_epi32(kk, _mm256_slli_epi32(p, 1));
      if constexpr (R == 8) _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + j), p);
      if constexpr (R == 4) _mm_storeu_si128(reinterpret_cast<__m128i*>(o + j), _mm256_castsi256_si128(p));
      if constexpr (R == 2) _mm_storel_epi64(reinterpret_cast<__m128i*>(o + j), _mm256_castsi256_si128(p));
    }
    for (; j < n; ++j) o[j] = finish<OP>(tail_popc<OP>(a + i * L, b + j * L, 0, L), k);
  }
}

enum class Isa { kAvx512, kAvx2, kScalar };

Isa pick_isa() {
  const char* force = std::getenv("BIPFT_XNOR_ISA");  // "avx512", "avx2" or "scalar"
  std::string want = force ? force : "";
  __builtin_cpu_init();
  bool has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
  bool has2 = __builtin_cpu_supports("avx2");
  if ((want.empty() || want == "avx512") && has512) return Isa::kAvx512;
  if ((want.empty() || want == "avx2" || want == "avx512") && has2) return Isa::kAvx2;
  return Isa::kScalar;
}

const Isa kIsa = pick_isa();

template <Op OP>
RowFn rows_for(int64_t kw) {
  if (kIsa != Isa::kScalar && (kw == 1 || kw == 2 || kw == 4))
    return kw == 1 ? rows_short_avx2<1, OP> : kw == 2 ? rows_short_avx2<2, OP>
                                                      : rows_short_avx2<4, OP>;
  return kIsa == Isa::kAvx512 ? rows_avx512<OP> : kIsa == Isa::kAvx2 ? rows_avx2<OP>
                                                                       : rows_scalar<OP>;
}

// ---- sign packing: 32 floats -> one word per plane. ----
inline void pack_tail(const float* x, int64_t k, int64_t w0, int64_t kw, uint32_t* s,
                      uint32_t* m) {
  for (int64_t w = w0; w < kw; ++w) {
    uint32_t sw = 0, mw = 0;
    for (int64_t j = 32 * w; j < std::min(k, 32 * w + 32); ++j) {
      sw |= uint32_t(x[j] > 0.0f) << (j - 32 * w);
      mw |= uint32_t(!(x[j] == 0.0f)) << (j - 32 * w);  // NaN counts as nonzero, like x != 0
    }
    s[w] = sw, m[w] = mw;
  }
}

__attribute__((target("avx2"))) void pack_rows_avx2(const float* x, int64_t r0, int64_t r1,
                                                    int64_t k, int64_t kw, uint32_t* s,
                                                    uint32_t* m) {
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * k;
    int64_t w = 0;
    for (; 32 * w + 32 <= k; ++w) {
      uint32_t sw = 0, mw = 0;
      for (int q = 0; q < 4; ++q) {
        __m256 v = _mm256_loadu_ps(xr + 32 * w + 8 * q);
        sw |= uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ))) << (8 * q);
        mw |= uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NEQ_UQ))) << (8 * q);
      }
      s[r * kw + w] = sw, m[r * kw + w] = mw;
    }
    pack_tail(xr, k, w, kw, s + r * kw, m + r * kw);
  }
}

void pack_rows_scalar(const float* x, int64_t r0, int64_t r1, int64_t k, int64_t kw, uint32_t* s,
                      uint32_t* m) {
  for (int64_t r = r0; r < r1; ++r) pack_tail(x + r * k, k, 0, kw, s + r * kw, m + r * kw);
}

// ---- threads ----
// $BIPFT_XNOR_THREADS caps the threads of one call: the caller plus tasks on XLA's intra-op
// pool (threads that already exist, so a call spawns none).
int64_t max_threads() {
  static const int64_t cap = [] {
    const char* env = std::getenv("BIPFT_XNOR_THREADS");
    int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
    return env ? std::max<int64_t>(1, std::min<int64_t>(hw, std::atoll(env))) : hw;
  }();
  return cap;
}

// Row chunks of one call handed out by an atomic counter to the caller and pool tasks. A task
// that starts after the caller has taken every chunk finds none and returns, so the caller
// never waits for a task that has not started (no deadlock when the pool is busy or the call
// itself runs on a pool thread); shared_ptr keeps the state alive for such late tasks.
struct Split {
  std::function<void(int64_t, int64_t)> rows;  // does rows [i0, i1)
  int64_t m = 0, chunk = 1, chunks = 0;
  std::atomic<int64_t> next{0}, done{0};

  void work() {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      rows(c * chunk, std::min(m, c * chunk + chunk));
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// Runs rows(i0, i1) over [0, m) on up to `threads` threads, in chunks of an even row count.
void parallel_rows(ffi::ThreadPool& pool, int64_t m, int64_t threads,
                   std::function<void(int64_t, int64_t)> rows) {
  threads = std::max<int64_t>(1, std::min<int64_t>({threads, max_threads(), pool.num_threads() + 1}));
  if (threads == 1) return rows(0, m);
  auto split = std::make_shared<Split>();
  split->rows = std::move(rows);
  split->m = m;
  // ~4 chunks per thread for balance (another process may slow one core).
  split->chunk = std::max<int64_t>(2, (m + 4 * threads - 1) / (4 * threads) + 1) / 2 * 2;
  split->chunks = (m + split->chunk - 1) / split->chunk;
  for (int64_t t = 1; t < std::min(threads, split->chunks); ++t)
    pool.Schedule([split] { split->work(); });
  split->work();
  while (split->done.load(std::memory_order_acquire) < split->chunks) _mm_pause();
}

// Per-thread scratch for b's nibble planes, reused across calls (a call's pool tasks finish
// before its caller returns, so no one reads the buffer after that).
__m256i* nibble_scratch(int64_t vectors) {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  thread_local std::unique_ptr<void, Free> buf;
  thread_local int64_t capacity = 0;
  if (vectors > capacity) {
    buf.reset(std::aligned_alloc(32, 32 * vectors));
    capacity = vectors;
  }
  return static_cast<__m256i*>(buf.get());
}

// a: [B, M, Kw] against b: [N, Kw] (one b for every batch) or [B, N, Kw] -> out: [B, M, N].
template <Op OP>
ffi::Error GemmImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> a, ffi::Buffer<ffi::U32> b,
                    ffi::ResultBuffer<ffi::S32> out, int64_t k) {
  auto ad = a.dimensions(), bd = b.dimensions();
  const bool shared_b = bd.size() == 2;
  if (ad.size() != 3 || (!shared_b && (bd.size() != 3 || bd[0] != ad[0])) ||
      ad[2] != bd[bd.size() - 1])
    return ffi::Error::InvalidArgument(
        "bipft 1-bit gemm: expected a[B, M, Kw] and b[N, Kw] or b[B, N, Kw]");
  const int64_t batch = ad[0], m = ad[1], kw = ad[2], n = bd[bd.size() - 2];
  const RowFn rows = rows_for<OP>(kw);
  const uint32_t* ap = a.typed_data();
  const uint32_t* bp = b.typed_data();
  int32_t* op = out->typed_data();
  const int64_t nv = kw / 8, planes = n * nv * 2;  // nibble-plane vectors per batch of b
  __m256i* bn = nullptr;
  if (rows == rows_avx2<OP> && nv > 0) {
    bn = nibble_scratch((shared_b ? 1 : batch) * planes);
    for (int64_t t = 0; t < (shared_b ? 1 : batch); ++t)
      split_nibbles(bp + t * n * kw, n, kw, bn + t * planes);
  }
  const int64_t total = batch * m;  // rows over every batch, split without crossing batches
  const int64_t work = total * n * std::max<int64_t>(kw, 4);
  parallel_rows(pool, total, std::min<int64_t>(total, work >> 16), [=](int64_t g0, int64_t g1) {
    while (g0 < g1) {
      const int64_t t = g0 / m, i0 = g0 % m, i1 = std::min(m, i0 + (g1 - g0));
      const int64_t tb = shared_b ? 0 : t;
      rows(ap + t * m * kw, bp + tb * n * kw, bn ? bn + tb * planes : nullptr, i0, i1, n, kw,
           op + t * m * n, k);
      g0 += i1 - i0;
    }
  });
  return ffi::Error::Success();
}

ffi::Error SignPackImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                        ffi::ResultBuffer<ffi::U32> signs, ffi::ResultBuffer<ffi::U32> mask) {
  auto xd = x.dimensions();
  auto sd = signs->dimensions();
  if (xd.size() != 2 || sd.size() != 2 || sd[0] != xd[0] || sd[1] != (xd[1] + 31) / 32)
    return ffi::Error::InvalidArgument("bipft_sign_pack: expected x[R, K] -> u32[R, ceil(K/32)]");
  const int64_t r = xd[0], k = xd[1], kw = sd[1];
  const float* xp = x.typed_data();
  uint32_t* sp = signs->typed_data();
  uint32_t* mp = mask->typed_data();
  const bool avx2 = kIsa != Isa::kScalar;
  parallel_rows(pool, r, std::min<int64_t>(r, r * k >> 17), [=](int64_t r0, int64_t r1) {
    if (avx2) return pack_rows_avx2(xp, r0, r1, k, kw, sp, mp);
    pack_rows_scalar(xp, r0, r1, k, kw, sp, mp);
  });
  return ffi::Error::Success();
}

}  // namespace

extern "C" const char* BipftXnorIsa() {
  return kIsa == Isa::kAvx512 ? "avx512_vpopcntdq" : kIsa == Isa::kAvx2 ? "avx2" : "scalar";
}

#define BIPFT_GEMM_HANDLER(SYMBOL, OP)                       \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(SYMBOL, GemmImpl<OP>,        \
                                ffi::Ffi::Bind()             \
                                    .Ctx<ffi::ThreadPool>()  \
                                    .Arg<ffi::Buffer<ffi::U32>>() \
                                    .Arg<ffi::Buffer<ffi::U32>>() \
                                    .Ret<ffi::Buffer<ffi::S32>>() \
                                    .Attr<int64_t>("k"));

BIPFT_GEMM_HANDLER(BipftXnorGemm, Op::kXor)
BIPFT_GEMM_HANDLER(BipftAndGemm, Op::kAnd)

XLA_FFI_DEFINE_HANDLER_SYMBOL(BipftSignPack, SignPackImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>());
