// W4A16 GEMV for decode (M <= 16) over fastcot's packed int4 layout, read as stored.
// Framework-free: raw pointers, sizes and a stream. The contract is on
// fastcot::Int4GemvParams in fastcot/api.h.
//
// Block = 4 warps sharing kGemvRows output columns; every lane streams 8 * VEC
// consecutive weights per row (one 16-byte load when VEC == 4), the warps take
// interleaved chunks of K, and a shuffle reduction plus one shared-memory pass
// combine them. Activations are re-read through L1/L2 (they are tiny next to
// the weights). The next chunk's weights are loaded before the current one is
// consumed, so two loads per row are in flight per lane. Launched with PDL (sm_90+,
// fastcot/launch.cuh), the first of them are issued before pdl_wait().
#pragma once

#include <cstdint>

#include "fastcot/common.cuh"

namespace fastcot {

constexpr int kGemvWarps = 4;
constexpr int kGemvThreads = kGemvWarps * 32;
constexpr int kGemvRows = 4;  // output columns (weight rows) per block

struct Int4GemvArgs {
  const void* x;            // [M, K], XT
  const uint32_t* qweight;  // [N, K/8]
  const void* scales;       // [G, N], scale_code
  const void* zeros;        // [G, N], scale_code, or null: zero point 8
  const void* bias;         // [N], bias_code, or null
  void* out;                // [M, N], XT
  int64_t m;
  int64_t n;
  int64_t k;
  int64_t group_size;  // > 0, a multiple of 8 * VEC dividing K
  int64_t stride_xm;
  int64_t stride_om;
  int scale_code;
  int bias_code;
};

// Dequantizes the 8 nibbles of one word, in K order: w[e] = (q[e] - zero) * scale, computed as
// fma(q, scale, offset) with offset = -zero * scale. The int4 -> fp16 trick: OR-ing a nibble
// into the mantissa of 1024.0h (0x6400) gives 1024 + q exactly, two lanes of a half2 per LOP3,
// and one HADD2 removes the 1024. The upper nibble of each byte lands as 16q, so those take
// scale_hi = scale / 16 (exact: a power-of-two step). A word's half2 lanes pair nibbles
// (0,4), (1,5), (2,6), (3,7). Host-callable so tests can check it without a GPU.
__host__ __device__ __forceinline__ void dequant_int4x8(uint32_t word, float scale, float scale_hi, float offset,
                                                        float (&w)[8]) {
  constexpr uint32_t kMagic = 0x64006400u;  // half2(1024, 1024)
  const uint32_t shifted = word >> 8;
  const uint32_t raw[4] = {
      (word & 0x000F000Fu) | kMagic,     // 1024 + (q0, q4)
      (word & 0x00F000F0u) | kMagic,     // 1024 + 16 (q1, q5)
      (shifted & 0x000F000Fu) | kMagic,  // 1024 + (q2, q6)
      (shifted & 0x00F000F0u) | kMagic,  // 1024 + 16 (q3, q7)
  };
  const __half2 minus_1024 = __float2half2_rn(-1024.0f);
  float2 v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __half2 h;
    memcpy(&h, &raw[i], sizeof(h));
    v[i] = __half22float2(__hadd2(h, minus_1024));  // q or 16q, exact in fp16
  }
  w[0] = fmaf(v[0].x, scale, offset);
  w[4] = fmaf(v[0].y, scale, offset);
  w[1] = fmaf(v[1].x, scale_hi, offset);
  w[5] = fmaf(v[1].y, scale_hi, offset);
  w[2] = fmaf(v[2].x, scale, offset);
  w[6] = fmaf(v[2].y, scale, offset);
  w[3] = fmaf(v[3].x, scale_hi, offset);
  w[7] = fmaf(v[3].y, scale_hi, offset);
}

template <int VEC>
struct WordVec;
template <>
struct WordVec<4> {
  uint4 v;
  __device__ __forceinline__ void load(const uint32_t* p) { v = __ldg(reinterpret_cast<const uint4*>(p)); }
  __device__ __forceinline__ void load_before_wait(const uint32_t* p) {
    v = ldg_before_wait(reinterpret_cast<const uint4*>(p));
  }
  __device__ __forceinline__ uint32_t operator[](int i) const {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
  }
};
template <>
struct WordVec<1> {
  uint32_t v;
  __device__ __forceinline__ void load(const uint32_t* p) { v = __ldg(p); }
  __device__ __forceinline__ void load_before_wait(const uint32_t* p) { v = ldg_before_wait(p); }
  __device__ __forceinline__ uint32_t operator[](int) const { return v; }
};

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xFFFFFFFFu, value, offset);
  return value;
}

// Blocks an SM must hold: caps registers at 128 for M <= 4 (16 warps per SM to hide memory
// latency), ~170 for M <= 8 and 255 for M <= 16, where the accumulators need them.
template <int M_TILE>
constexpr int gemv_min_blocks() {
  return M_TILE <= 4 ? 4 : M_TILE <= 8 ? 3 : 2;
}

template <typename XT, int M_TILE, int VEC>
__global__ void __launch_bounds__(kGemvThreads, gemv_min_blocks<M_TILE>())
    int4_gemv_kernel(const Int4GemvArgs args) {
  constexpr int kChunk = 8 * VEC;  // K elements per lane per step
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t n0 = int64_t(blockIdx.x) * kGemvRows;
  const int64_t words_per_row = args.k / 8;
  const int64_t chunks = args.k / kChunk;
  const XT* x = static_cast<const XT*>(args.x);

  // Rows past N repeat the last row: loads stay in bounds, their sums are never stored.
  const uint32_t* rows[kGemvRows];
#pragma unroll
  for (int r = 0; r < kGemvRows; ++r) {
    rows[r] = args.qweight + min(n0 + r, args.n - 1) * words_per_row;
  }

  float acc[M_TILE][kGemvRows];
#pragma unroll
  for (int i = 0; i < M_TILE; ++i) {
#pragma unroll
    for (int r = 0; r < kGemvRows; ++r) acc[i][r] = 0.0f;
  }

  // The first chunk's weights are loaded before pdl_wait() (under PDL they overlap the end of
  // the kernel before); x, scales, zeros, bias and the stores come after it.
  int64_t chunk = int64_t(warp) * 32 + lane;
  WordVec<VEC> next[kGemvRows];
  if (chunk < chunks) {
#pragma unroll
    for (int r = 0; r < kGemvRows; ++r) next[r].load_before_wait(rows[r] + chunk * VEC);
  }
  pdl_launch_dependents();
  pdl_wait();
  for (; chunk < chunks; chunk += kGemvThreads) {
    WordVec<VEC> words[kGemvRows];
#pragma unroll
    for (int r = 0; r < kGemvRows; ++r) words[r] = next[r];
    const int64_t following = chunk + kGemvThreads;
    if (following < chunks) {
#pragma unroll
      for (int r = 0; r < kGemvRows; ++r) next[r].load(rows[r] + following * VEC);
    }

    const int64_t k0 = chunk * kChunk;
    const int64_t group = k0 / args.group_size;  // a chunk never straddles groups
    float scale[kGemvRows], scale_hi[kGemvRows], offset[kGemvRows];
#pragma unroll
    for (int r = 0; r < kGemvRows; ++r) {
      const int64_t idx = group * args.n + min(n0 + r, args.n - 1);
      scale[r] = load_float(args.scales, args.scale_code, idx);
      scale_hi[r] = scale[r] * 0.0625f;
      const float zero = args.zeros != nullptr ? load_float(args.zeros, args.scale_code, idx) : 8.0f;
      offset[r] = -zero * scale[r];
    }

#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      float w[kGemvRows][8];
#pragma unroll
      for (int r = 0; r < kGemvRows; ++r) dequant_int4x8(words[r][j], scale[r], scale_hi[r], offset[r], w[r]);
#pragma unroll
      for (int i = 0; i < M_TILE; ++i) {
        if (i < args.m) {
          float xs[8];
          load8_as_float(x + i * args.stride_xm + k0 + 8 * j, xs);
#pragma unroll
          for (int r = 0; r < kGemvRows; ++r) {
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[i][r] = fmaf(xs[e], w[r][e], acc[i][r]);
          }
        }
      }
    }
  }

  __shared__ float partial[kGemvWarps][M_TILE][kGemvRows];
#pragma unroll
  for (int i = 0; i < M_TILE; ++i) {
#pragma unroll
    for (int r = 0; r < kGemvRows; ++r) {
      const float total = warp_sum(acc[i][r]);
      if (lane == 0) partial[warp][i][r] = total;
    }
  }
  __syncthreads();
  for (int t = threadIdx.x; t < M_TILE * kGemvRows; t += kGemvThreads) {
    const int i = t / kGemvRows;
    const int r = t % kGemvRows;
    const int64_t col = n0 + r;
    if (i < args.m && col < args.n) {
      float total = 0.0f;
#pragma unroll
      for (int w = 0; w < kGemvWarps; ++w) total += partial[w][i][r];
      if (args.bias != nullptr) total += load_float(args.bias, args.bias_code, col);
      static_cast<XT*>(args.out)[i * args.stride_om + col] = from_float<XT>(total);
    }
  }
}

}  // namespace fastcot
