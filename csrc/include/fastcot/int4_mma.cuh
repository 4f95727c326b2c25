// W4A16 decode matmul on tensor cores (M <= 16, fp16/bf16 activations) over fastcot's packed
// int4 layout read as stored. The launcher (int4_gemv.cu) sends here every call whose K and
// group size are multiples of 128 and whose scales share x's dtype; the rest takes the SIMT
// kernel of int4_gemv.cuh.
//
// A block owns kMmaRows = 16 output columns (two m16n8k16 n-tiles of 8 weight rows) and its
// W warps split K into 128-wide chunks (warp w takes chunks w, w + W, ...). In a chunk, lane
// (g = lane / 4, c = lane % 4) loads one 16-byte vector per n-tile: 32 consecutive nibbles
// of weight row 8t + g, K [32c, 32c + 32). The MMA's k order inside a thread's fragment is
// ours to choose as long as x's fragment uses the same one, so nothing is shuffled:
//   - one LOP3 per pair turns a word's nibbles (j, j+4) into a half2 / bf162 of 1024 + q
//     (fp16: 0x6400 | q) or 128 + q (bf16: 0x4300 | q, exact with 7 mantissa bits);
//   - x's fragment for the same pairs comes from one 16-byte load and four PRMTs.
//   - one HADD2 / HFMA2 per pair removes the 1024 (fp16: the upper nibble lands as 16q, so
//     (1024 + 16q) / 16 - 64) or the 128 (bf16), exactly: the MMA sees q itself.
// The tensor core sums x * q in fp32 with exact products. Per chunk (one group, since the
// group size is a multiple of 128) the fold out += s * (sum x*q - z * sum x) applies the
// scale and zero once; sum x comes from one more MMA against ones, shared by both n-tiles.
// The next chunk's weights are loaded before the current one is used (two chunks in flight
// per thread), with L1::no_allocate; the W warps' sums meet in shared memory at the end.
#pragma once

#include <cstdint>

#include "fastcot/common.cuh"

namespace fastcot {

constexpr int kMmaTiles = 2;             // n8 tiles per block
constexpr int kMmaRows = 8 * kMmaTiles;  // output columns (weight rows) per block
constexpr int kMmaChunk = 128;           // K per lane-vector per n-tile
constexpr int kMmaMaxWarps = 16;

struct Int4MmaArgs {
  const void* x;         // [M, K], XT, rows 16-byte aligned
  const uint4* qweight;  // [N, K/8] int32 viewed as 16-byte vectors
  const void* scales;    // [G, N], XT
  const void* zeros;     // [G, N], XT, or null: zero point 8
  const void* bias;      // [N], bias_code, or null
  void* out;             // [M, N], XT
  int m;
  int n;
  int chunks;              // K / 128
  uint32_t group_magic;    // chunk -> group: __umulhi(chunk, magic), or 0 when a group is one chunk
  int64_t stride_xm;
  int64_t stride_om;
  int bias_code;
};

// a * b + c in one HFMA2 on the device; the host (emulator) has no __hfma2, and for the exact
// operands used here a multiply then an add gives the same bits.
__host__ __device__ __forceinline__ __half2 hfma2_exact(__half2 a, __half2 b, __half2 c) {
#if defined(__CUDA_ARCH__)
  return __hfma2(a, b, c);
#else
  return __hadd2(__hmul2(a, b), c);
#endif
}

// A bf162 (given as bits) minus 128 in each lane, one HADD2.BF16 / HFMA2.BF16 on the device;
// exact for the 128 + q values it is used on, so the host's fp32 arithmetic gives the same bits.
__host__ __device__ __forceinline__ uint32_t bf162_minus_128(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  __nv_bfloat162 v;
  memcpy(&v, &bits, sizeof(v));
  v = __hsub2(v, __float2bfloat162_rn(128.0f));
  memcpy(&bits, &v, sizeof(v));
  return bits;
#else
  const float lo = bits_to_float(bits << 16) - 128.0f, hi = bits_to_float(bits & 0xFFFF0000u) - 128.0f;
  uint32_t lo_bits, hi_bits;
  memcpy(&lo_bits, &lo, sizeof(lo));
  memcpy(&hi_bits, &hi, sizeof(hi));
  return (lo_bits >> 16) | (hi_bits & 0xFFFF0000u);  // exact: q has at most 4 significant bits
#endif
}

// Dequantization of one word into the B fragments of its two k16 steps.
template <typename XT>
struct MmaDequant;

template <>
struct MmaDequant<__half> {
  // Word w -> b[0..3] = (q0, q4), (q1, q5), (q2, q6), (q3, q7) as half2.
  __host__ __device__ __forceinline__ static void run(uint32_t w, uint32_t (&b)[4]) {
    constexpr uint32_t kMagic = 0x64006400u;  // half2(1024, 1024)
    const uint32_t shifted = w >> 8;
    const uint32_t raw[4] = {and_or(w, 0x000F000Fu, kMagic), and_or(w, 0x00F000F0u, kMagic),
                             and_or(shifted, 0x000F000Fu, kMagic), and_or(shifted, 0x00F000F0u, kMagic)};
    const __half2 minus_1024 = __float2half2_rn(-1024.0f);
    const __half2 sixteenth = __float2half2_rn(0.0625f);
    const __half2 minus_64 = __float2half2_rn(-64.0f);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __half2 h;
      memcpy(&h, &raw[i], sizeof(h));
      // 1024 + q - 1024, or (1024 + 16q) / 16 - 64: exact either way.
      h = i % 2 == 0 ? __hadd2(h, minus_1024) : hfma2_exact(h, sixteenth, minus_64);
      memcpy(&b[i], &h, sizeof(h));
    }
  }
};

template <>
struct MmaDequant<__nv_bfloat16> {
  // Word w -> (q0, q4), (q1, q5), (q2, q6), (q3, q7) as bf162; bit 7 of a bf16 is the
  // exponent's, so each pair is shifted down rather than taken as 16q.
  __host__ __device__ __forceinline__ static void run(uint32_t w, uint32_t (&b)[4]) {
    constexpr uint32_t kMagic = 0x43004300u;  // bf162(128, 128): 128 + q, exact with 7 mantissa bits
#pragma unroll
    for (int i = 0; i < 4; ++i) b[i] = bf162_minus_128(and_or(w >> (4 * i), 0x000F000Fu, kMagic));
  }
};

// x's fragment registers for one word (8 consecutive K) of one row: the pairs (0,4), (1,5),
// (2,6), (3,7) in the order MmaDequant produces them.
__device__ __forceinline__ void x_pairs(const uint4 v, uint32_t (&p)[4]) {
  p[0] = __byte_perm(v.x, v.z, 0x5410);
  p[1] = __byte_perm(v.x, v.z, 0x7632);
  p[2] = __byte_perm(v.y, v.w, 0x5410);
  p[3] = __byte_perm(v.y, v.w, 0x7632);
}

template <typename XT>
__device__ __forceinline__ float load_scale(const void* ptr, int index) {
  return to_float(__ldg(static_cast<const XT*>(ptr) + index));
}

// Threads an SM holds: 1024 for M_TILE 8 (at most 64 registers), 512 for M_TILE 16, whose two
// x halves need more registers; the launcher sizes its grid with the same numbers.
template <int M_TILE>
constexpr int mma_resident_threads() {
  return M_TILE == 8 ? 1024 : 512;
}

template <typename XT, int M_TILE>
__global__ void __launch_bounds__(kMmaMaxWarps * 32, mma_resident_threads<M_TILE>() / (kMmaMaxWarps * 32))
    int4_mma_kernel(const Int4MmaArgs args) {
  static_assert(M_TILE == 8 || M_TILE == 16, "one or two n8 tiles of x rows");
  constexpr int kHalves = M_TILE / 8;  // x rows g and (for M_TILE 16) g + 8
  extern __shared__ float mma_partial[];  // [W][M_TILE][kMmaRows]
  const int warps = blockDim.x / 32;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4, c = lane % 4;
  const int n0 = blockIdx.x * kMmaRows;
  const int words_per_row = args.chunks * (kMmaChunk / 8);

  // The weights are the MMA's A (16 rows = the block's columns: lane g holds rows g and g + 8),
  // x its B (8 columns = 8 rows of x). Rows past N repeat the last row: loads stay in bounds,
  // their sums are never stored.
  const uint4* rows[kMmaTiles];
  int cols[kMmaTiles];
#pragma unroll
  for (int t = 0; t < kMmaTiles; ++t) {
    cols[t] = min(n0 + 8 * t + g, args.n - 1);
    rows[t] = args.qweight + (int64_t(cols[t]) * words_per_row) / 4 + c;
  }
  // Rows of x this lane feeds to B; rows past M repeat row M - 1: their columns of D are
  // never stored, so no load is predicated and nothing is zeroed.
  const XT* x = static_cast<const XT*>(args.x);
  const XT* x_row[kHalves];
#pragma unroll
  for (int h = 0; h < kHalves; ++h) x_row[h] = x + min(g + 8 * h, args.m - 1) * args.stride_xm + 32 * c;
  constexpr uint32_t kOnes = std::is_same<XT, __half>::value ? 0x3C003C00u : 0x3F803F80u;
  const uint32_t ones[4] = {kOnes, kOnes, kOnes, kOnes};

  float total[kHalves][kMmaTiles][2] = {};  // x row 2c + e (+ 8h), column 8t + g
  // Running pointers: one add per iteration instead of index math per load.
  const int w_step = warps * (kMmaChunk / 32);  // uint4 per row per iteration
  const int x_step = warps * kMmaChunk;
#pragma unroll
  for (int t = 0; t < kMmaTiles; ++t) rows[t] += warp * (kMmaChunk / 32);
#pragma unroll
  for (int h = 0; h < kHalves; ++h) x_row[h] += warp * kMmaChunk;
  int chunk = warp;
  uint4 next[kMmaTiles];
  if (chunk < args.chunks) {
#pragma unroll
    for (int t = 0; t < kMmaTiles; ++t) next[t] = ldg_stream(rows[t]);
  }
  for (; chunk < args.chunks; chunk += warps) {
    uint4 cur[kMmaTiles];
#pragma unroll
    for (int t = 0; t < kMmaTiles; ++t) {
      cur[t] = next[t];
      rows[t] += w_step;
    }
    if (chunk + warps < args.chunks) {
#pragma unroll
      for (int t = 0; t < kMmaTiles; ++t) next[t] = ldg_stream(rows[t]);
    }
    // acc[h][0..1]: column g, x rows 2c, 2c+1; acc[h][2..3]: column g + 8. xsum[h][0..1]: sum x.
    float acc[kHalves][4] = {}, xsum[kHalves][4] = {};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t w[kMmaTiles][4];
#pragma unroll
      for (int t = 0; t < kMmaTiles; ++t) {
        MmaDequant<XT>::run(j == 0 ? cur[t].x : j == 1 ? cur[t].y : j == 2 ? cur[t].z : cur[t].w, w[t]);
      }
      // Two k16 steps per word: nibbles (0,4),(1,5) then (2,6),(3,7).
      const uint32_t a0[4] = {w[0][0], w[1][0], w[0][1], w[1][1]};
      const uint32_t a1[4] = {w[0][2], w[1][2], w[0][3], w[1][3]};
#pragma unroll
      for (int h = 0; h < kHalves; ++h) {
        uint32_t xp[4];
        x_pairs(__ldg(reinterpret_cast<const uint4*>(x_row[h] + 8 * j)), xp);
        const uint32_t b0[2] = {xp[0], xp[1]};
        const uint32_t b1[2] = {xp[2], xp[3]};
        mma_16816<XT>(acc[h], a0, b0);
        mma_16816<XT>(acc[h], a1, b1);
        mma_16816<XT>(xsum[h], ones, b0);
        mma_16816<XT>(xsum[h], ones, b1);
      }
    }
#pragma unroll
    for (int h = 0; h < kHalves; ++h) x_row[h] += x_step;
    // The chunk lies in one group: out += s * (sum x*q - z * sum x).
    const int group = args.group_magic == 0 ? chunk : int(__umulhi(uint32_t(chunk), args.group_magic));
#pragma unroll
    for (int t = 0; t < kMmaTiles; ++t) {
      const int idx = group * args.n + cols[t];
      const float s = load_scale<XT>(args.scales, idx);
      const float z = args.zeros != nullptr ? load_scale<XT>(args.zeros, idx) : 8.0f;
#pragma unroll
      for (int h = 0; h < kHalves; ++h) {
#pragma unroll
        for (int e = 0; e < 2; ++e) total[h][t][e] = fmaf(s, fmaf(-z, xsum[h][e], acc[h][2 * t + e]), total[h][t][e]);
      }
    }
  }

  // The warps' partial sums meet in shared memory; one thread per output adds them in warp order.
#pragma unroll
  for (int h = 0; h < kHalves; ++h) {
#pragma unroll
    for (int t = 0; t < kMmaTiles; ++t) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        mma_partial[(warp * M_TILE + 8 * h + 2 * c + e) * kMmaRows + 8 * t + g] = total[h][t][e];
      }
    }
  }
  __syncthreads();
  for (int o = threadIdx.x; o < M_TILE * kMmaRows; o += blockDim.x) {
    const int row = o / kMmaRows, col = n0 + o % kMmaRows;
    if (row < args.m && col < args.n) {
      float sum = 0.0f;
      for (int w = 0; w < warps; ++w) sum += mma_partial[w * M_TILE * kMmaRows + o];
      if (args.bias != nullptr) sum += load_float(args.bias, args.bias_code, col);
      static_cast<XT*>(args.out)[row * args.stride_om + col] = from_float<XT>(sum);
    }
  }
}

}  // namespace fastcot
