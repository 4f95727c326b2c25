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
    const uint32_t raw[4] = {(w & 0x000F000Fu) | kMagic, (w & 0x00F000F0u) | kMagic,
                             (shifted & 0x000F000Fu) | kMagic, (shifted & 0x00F000F0u) | kMagic};
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
    for (int i = 0; i < 4; ++i) b[i] = bf162_minus_128(((w >> (4 * i)) & 0x000F000Fu) | kMagic);
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

template <typename XT, int M_TILE>
__global__ void __launch_bounds__(kMmaMaxWarps * 32, 2) int4_mma_kernel(const Int4MmaArgs args) {
  static_assert(M_TILE == 8 || M_TILE == 16, "the A fragment holds 8 or 16 rows");
  extern __shared__ float mma_partial[];  // [W][M_TILE][kMmaRows]
  const int warps = blockDim.x / 32;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4, c = lane % 4;
  const int n0 = blockIdx.x * kMmaRows;
  const int words_per_row = args.chunks * (kMmaChunk / 8);

  // Rows past N repeat the last row: loads stay in bounds, their sums are never stored.
  const uint4* rows[kMmaTiles];
#pragma unroll
  for (int t = 0; t < kMmaTiles; ++t) {
    const int row = min(n0 + 8 * t + g, args.n - 1);
    rows[t] = args.qweight + (int64_t(row) * words_per_row) / 4 + c;
  }
  // Columns this lane's accumulators hold: 8t + 2c + e.
  int cols[kMmaTiles][2];
#pragma unroll
  for (int t = 0; t < kMmaTiles; ++t) {
    for (int e = 0; e < 2; ++e) cols[t][e] = min(n0 + 8 * t + 2 * c + e, args.n - 1);
  }
  // Rows of x this lane feeds to the A fragment; rows past M read as zeros.
  const XT* x = static_cast<const XT*>(args.x);
  const bool row_lo = g < args.m, row_hi = M_TILE > 8 && g + 8 < args.m;
  const XT* x_lo = x + (row_lo ? g : 0) * args.stride_xm + 32 * c;
  const XT* x_hi = x + (row_hi ? g + 8 : 0) * args.stride_xm + 32 * c;
  constexpr uint32_t kOnes = std::is_same<XT, __half>::value ? 0x3C003C00u : 0x3F803F80u;
  const uint32_t ones[2] = {kOnes, kOnes};

  float total[kMmaTiles][4] = {};
  int chunk = warp;
  uint4 next[kMmaTiles];
  if (chunk < args.chunks) {
#pragma unroll
    for (int t = 0; t < kMmaTiles; ++t) next[t] = ldg_stream(rows[t] + chunk * (kMmaChunk / 32));
  }
  for (; chunk < args.chunks; chunk += warps) {
    uint4 cur[kMmaTiles];
#pragma unroll
    for (int t = 0; t < kMmaTiles; ++t) cur[t] = next[t];
    if (chunk + warps < args.chunks) {
#pragma unroll
      for (int t = 0; t < kMmaTiles; ++t) next[t] = ldg_stream(rows[t] + (chunk + warps) * (kMmaChunk / 32));
    }
    float acc[kMmaTiles][4] = {}, xsum[4] = {};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t lo[4] = {}, hi[4] = {};
      const int k = chunk * kMmaChunk + 8 * j;
      if (row_lo) x_pairs(__ldg(reinterpret_cast<const uint4*>(x_lo + k)), lo);
      if (M_TILE > 8 && row_hi) x_pairs(__ldg(reinterpret_cast<const uint4*>(x_hi + k)), hi);
      // Two k16 steps per word: nibbles (0,4),(1,5) then (2,6),(3,7).
      const uint32_t a0[4] = {lo[0], hi[0], lo[1], hi[1]};
      const uint32_t a1[4] = {lo[2], hi[2], lo[3], hi[3]};
      mma_16816<XT>(xsum, a0, ones);
      mma_16816<XT>(xsum, a1, ones);
#pragma unroll
      for (int t = 0; t < kMmaTiles; ++t) {
        const uint32_t word = j == 0 ? cur[t].x : j == 1 ? cur[t].y : j == 2 ? cur[t].z : cur[t].w;
        uint32_t b[4];
        MmaDequant<XT>::run(word, b);
        const uint32_t b0[2] = {b[0], b[1]};
        const uint32_t b1[2] = {b[2], b[3]};
        mma_16816<XT>(acc[t], a0, b0);
        mma_16816<XT>(acc[t], a1, b1);
      }
    }
    // The chunk lies in one group: out += s * (sum x*q - (z + offset) * sum x).
    const int group = args.group_magic == 0 ? chunk : int(__umulhi(uint32_t(chunk), args.group_magic));
#pragma unroll
    for (int t = 0; t < kMmaTiles; ++t) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int idx = group * args.n + cols[t][e];
        const float s = load_scale<XT>(args.scales, idx);
        const float z = args.zeros != nullptr ? load_scale<XT>(args.zeros, idx) : 8.0f;
        total[t][e] = fmaf(s, fmaf(-z, xsum[e], acc[t][e]), total[t][e]);
        if (M_TILE > 8) total[t][e + 2] = fmaf(s, fmaf(-z, xsum[e + 2], acc[t][e + 2]), total[t][e + 2]);
      }
    }
  }

  // The warps' partial sums meet in shared memory; one thread per output adds them in warp order.
#pragma unroll
  for (int t = 0; t < kMmaTiles; ++t) {
#pragma unroll
    for (int i = 0; i < (M_TILE > 8 ? 4 : 2); ++i) {
      const int row = g + 8 * (i / 2), col = 8 * t + 2 * c + i % 2;
      mma_partial[(warp * M_TILE + row) * kMmaRows + col] = total[t][i];
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
