// W4A16 decode matmul on tensor cores (M <= 16, fp16/bf16 activations) over fastcot's packed
// int4 layout read as stored. The launcher (int4_gemv.cu) sends here every call whose K and
// group size are multiples of 128 and whose scales share x's dtype; the rest takes the SIMT
// kernel of int4_gemv.cuh.
//
// A block owns kRows output columns (kTiles m16n8k16 n8-tiles of weight rows: 2 tiles, 16
// columns, for M_TILE 8; 4 tiles, 32 columns, for M_TILE 16, so x's fragments, its PRMTs and
// the sum-of-x MMAs serve twice the weights) and its W warps split K into 128-wide chunks
// (warp w takes chunks w, w + W, ...). In a chunk, lane (g = lane / 4, c = lane % 4) takes one
// 16-byte vector per tile: 32 consecutive nibbles of weight row 8t + g, K [32c, 32c + 32). The
// MMA's k order inside a thread's fragment is ours to choose as long as x's fragment uses the
// same one, so nothing is shuffled:
//   - a shift and one LOP3 per pair turn a word's nibbles (j, j+4) into a half2 / bf162 of
//     o + q, exactly: fp16 puts q in bits 4-7 of 64.0 (0x5400, mantissa step 1/16): 64 + q;
//     bf16 puts q in bits 0-3 of 128.0 (0x4300, 7 mantissa bits): 128 + q;
//   - x's fragment for the same pairs comes from one 16-byte load and four PRMTs;
//   - the offset o stays: the MMA sees o + q, and o joins the zero point in the fold below
//     (products of x and o + q are exact in fp32; the sums lose 3 (fp16) or 4 (bf16) of fp32's
//     24 bits to the offset, far beyond the output's 11 or 8).
// The tensor core sums x * (o + q) in fp32. Per chunk (one group, since the group size is a
// multiple of 128) the fold out += s * (sum x*(o + q) - (z + o) * sum x) applies the scale and
// zero once; sum x comes from one more MMA against ones, shared by all tiles.
//
// The weights stream through a per-warp ring of kMmaStages shared-memory stages filled by
// cp.async (no registers held by loads in flight): kMmaStages - 1 chunks are in flight while
// one is computed. Each lane reads back only the 16-byte slots it copied itself, so the ring
// needs no barrier. The warps' sums meet in shared memory (each in its own ring) at the end.
//
// Launched with PDL (sm_90+, fastcot/launch.cuh), the ring's first kMmaStages - 1 chunks are
// copied before pdl_wait(), while the previous kernel on the stream finishes; every read of x,
// scales, zeros and bias and every store comes after it.
#pragma once

#include <cstdint>

#include "fastcot/common.cuh"

namespace fastcot {

constexpr int kMmaChunk = 128;  // K per lane-vector per n-tile
constexpr int kMmaMaxWarps = 16;  // warps per block, at most (mma_max_warps)
constexpr int kMmaStages = 4;  // ring stages per warp: 3 chunks in flight while one is computed

// n8 tiles per block: 2 (16 columns) for M_TILE 8, 4 (32 columns) for M_TILE 16.
template <int M_TILE>
__host__ __device__ constexpr int mma_tiles() {
  return M_TILE == 8 ? 2 : 4;
}

template <int M_TILE>
__host__ __device__ constexpr int mma_rows() {
  return 8 * mma_tiles<M_TILE>();
}

// Dynamic shared memory per warp: its ring, one 16-byte slot per lane, tile and stage. The
// warp's partial sums (M_TILE x rows floats) reuse it at the end.
template <int M_TILE>
__host__ __device__ constexpr int mma_ring_bytes() {
  return kMmaStages * mma_tiles<M_TILE>() * 32 * 16;
}

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

// Dequantization of one word into the B fragments of its two k16 steps.
template <typename XT>
struct MmaDequant;

template <>
struct MmaDequant<__half> {
  // Word w -> (q0, q4), (q1, q5), (q2, q6), (q3, q7) as half2 of 64 + q: the nibble lands in
  // bits 4-7 of each 16-bit lane, where fp16's 64.0 (0x5400) has a mantissa step of 1/16, so
  // the lane is exactly 64 + q. The 64 is not removed here: the fold subtracts 64 * sum x with
  // the zero point (kOffset).
  static constexpr float kOffset = 64.0f;
  __host__ __device__ __forceinline__ static void run(uint32_t w, uint32_t (&b)[4]) {
    constexpr uint32_t kMagic = 0x54005400u;  // half2(64, 64)
    b[0] = and_or(w << 4, 0x00F000F0u, kMagic);
    b[1] = and_or(w, 0x00F000F0u, kMagic);
    b[2] = and_or(w >> 4, 0x00F000F0u, kMagic);
    b[3] = and_or(w >> 8, 0x00F000F0u, kMagic);
  }
};

template <>
struct MmaDequant<__nv_bfloat16> {
  // Word w -> (q0, q4), (q1, q5), (q2, q6), (q3, q7) as bf162 of 128 + q; bit 7 of a bf16 is
  // the exponent's, so each pair is shifted down rather than taken as 16q. The 128 is not
  // removed here: the fold subtracts 128 * sum x with the zero point (kOffset).
  static constexpr float kOffset = 128.0f;
  __host__ __device__ __forceinline__ static void run(uint32_t w, uint32_t (&b)[4]) {
    constexpr uint32_t kMagic = 0x43004300u;  // bf162(128, 128): 128 + q, exact with 7 mantissa bits
#pragma unroll
    for (int i = 0; i < 4; ++i) b[i] = and_or(w >> (4 * i), 0x000F000Fu, kMagic);
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

// Threads an SM holds: 768 for M_TILE 8 (at most 80 registers: 24 warps, each with 3 chunks in
// flight), 512 for M_TILE 16, whose two x halves and four tiles need more registers; the
// launcher sizes its grid with the same numbers.
template <int M_TILE>
__host__ __device__ constexpr int mma_resident_threads() {
  return M_TILE == 8 ? 768 : 512;
}

// Warps per block, at most: a divisor of the resident warps (8 for M_TILE 8, 16 for M_TILE 16).
template <int M_TILE>
__host__ __device__ constexpr int mma_max_warps() {
  return M_TILE == 8 ? 8 : kMmaMaxWarps;
}

template <typename XT, int M_TILE, bool HAS_ZEROS>
__global__ void __launch_bounds__(mma_max_warps<M_TILE>() * 32,
                                  mma_resident_threads<M_TILE>() / (mma_max_warps<M_TILE>() * 32))
    int4_mma_kernel(const Int4MmaArgs args) {
  static_assert(M_TILE == 8 || M_TILE == 16, "one or two n8 tiles of x rows");
  constexpr int kHalves = M_TILE / 8;  // x rows g and (for M_TILE 16) g + 8
  constexpr int kTiles = mma_tiles<M_TILE>();
  constexpr int kPairs = kTiles / 2;  // A operands: tiles 2p (rows g) and 2p + 1 (rows g + 8)
  constexpr int kRows = mma_rows<M_TILE>();
  constexpr int kStage = kTiles * 32;  // uint4 slots of one stage of a warp's ring
  static_assert(M_TILE * kRows * sizeof(float) <= mma_ring_bytes<M_TILE>(), "partials fit the ring");
  extern __shared__ uint4 mma_ring[];  // [W][kMmaStages][kTiles][32 lanes]
  const int warps = blockDim.x / 32;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int g = lane / 4, c = lane % 4;
  const int n0 = blockIdx.x * kRows;
  // Loop invariants below go through opaque_u32 so that they stay in registers.
  uint4* const ring = mma_ring + opaque_u32(warp * (kMmaStages * kStage) + lane);  // + (stage * kTiles + t) * 32

  // The weights are the MMA's A (16 rows = two tiles: lane g holds rows g and g + 8), x its B
  // (8 columns = 8 rows of x). Rows past N repeat the last row: loads stay in bounds, their
  // sums are never stored.
  const int vectors_per_row = args.chunks * (kMmaChunk / 32);
  const uint4* src[kTiles];
  int cols[kTiles];
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
    cols[t] = int(opaque_u32(min(n0 + 8 * t + g, args.n - 1)));
    src[t] = args.qweight + int64_t(cols[t]) * vectors_per_row + warp * (kMmaChunk / 32) + c;
  }
  const int src_step = int(opaque_u32(warps * (kMmaChunk / 32)));  // uint4 per row from one chunk to the next
  // Rows of x this lane feeds to B; rows past M repeat row M - 1: their columns of D are
  // never stored, so no load is predicated and nothing is zeroed.
  const XT* x = static_cast<const XT*>(args.x);
  const uint4* x_row[kHalves];
#pragma unroll
  for (int h = 0; h < kHalves; ++h) {
    x_row[h] = reinterpret_cast<const uint4*>(x + min(g + 8 * h, args.m - 1) * args.stride_xm + warp * kMmaChunk + 32 * c);
  }
  const int x_step = int(opaque_u32(warps * kMmaChunk / 8));  // uint4
  constexpr uint32_t kOnes = std::is_same<XT, __half>::value ? 0x3C003C00u : 0x3F803F80u;
  const uint32_t ones[4] = {opaque_u32(kOnes), opaque_u32(kOnes), opaque_u32(kOnes), opaque_u32(kOnes)};
  const XT* scales = static_cast<const XT*>(args.scales);
  const XT* zeros = static_cast<const XT*>(args.zeros);

  pdl_launch_dependents();
  // Fill the ring: this warp's first kMmaStages - 1 chunks, one commit group each (empty past
  // the last chunk, so that group i is always chunk i's).
#pragma unroll
  for (int s = 0; s < kMmaStages - 1; ++s) {
    if (warp + s * warps < args.chunks) {
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
        async_copy16(ring + (s * kTiles + t) * 32, src[t]);
        src[t] += src_step;
      }
    }
    async_copy_commit();
  }
  // Under PDL everything above (the weights, which no kernel writes) overlaps the end of the
  // kernel before; x, the scales and zeros (plain loads, which ptxas would sink below the wait
  // anyway), the bias and the stores come after the wait. The next kernel may launch at once:
  // launched with PDL itself, it waits in turn before touching what this one writes.
  pdl_wait();

  float total[kHalves][kTiles][2] = {};  // x row 2c + e (+ 8h), column 8t + g
  static_assert((kMmaStages & (kMmaStages - 1)) == 0, "stage arithmetic by masks");
  unsigned stage = 0;  // ring stage of `chunk`
  const int last_refill = args.chunks - (kMmaStages - 1) * warps;  // chunks below it refill the ring
  for (int chunk = warp; chunk < args.chunks; chunk += warps) {
    // Refill the stage read in the previous iteration (its words are in registers and used).
    if (chunk < last_refill) {
      uint4* const slot = ring + ((stage + kMmaStages - 1) & (kMmaStages - 1)) * kStage;
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
        async_copy16(slot + t * 32, src[t]);
        src[t] += src_step;
      }
    }
    async_copy_commit();
    async_copy_wait<kMmaStages - 1>();  // this chunk's group has landed
    uint4 cur[kTiles];
    const uint4* const slot = ring + stage * kStage;
#pragma unroll
    for (int t = 0; t < kTiles; ++t) cur[t] = slot[t * 32];
    stage = (stage + 1) & (kMmaStages - 1);

    // acc[h][p][0..1]: column 16p + g (tile 2p), x rows 2c, 2c+1; acc[h][p][2..3]: tile 2p + 1.
    // xsum[h][0..1]: sum x of x rows 2c, 2c+1.
    float acc[kHalves][kPairs][4] = {}, xsum[kHalves][4] = {};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      uint32_t w[kTiles][4];
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
        MmaDequant<XT>::run(j == 0 ? cur[t].x : j == 1 ? cur[t].y : j == 2 ? cur[t].z : cur[t].w, w[t]);
      }
#pragma unroll
      for (int h = 0; h < kHalves; ++h) {
        uint32_t xp[4];
        x_pairs(__ldg(x_row[h] + j), xp);
        // Two k16 steps per word: nibbles (0,4),(1,5) then (2,6),(3,7).
        const uint32_t b0[2] = {xp[0], xp[1]};
        const uint32_t b1[2] = {xp[2], xp[3]};
#pragma unroll
        for (int p = 0; p < kPairs; ++p) {
          const uint32_t a0[4] = {w[2 * p][0], w[2 * p + 1][0], w[2 * p][1], w[2 * p + 1][1]};
          const uint32_t a1[4] = {w[2 * p][2], w[2 * p + 1][2], w[2 * p][3], w[2 * p + 1][3]};
          mma_16816<XT>(acc[h][p], a0, b0);
          mma_16816<XT>(acc[h][p], a1, b1);
        }
        mma_16816<XT>(xsum[h], ones, b0);
        mma_16816<XT>(xsum[h], ones, b1);
      }
    }
#pragma unroll
    for (int h = 0; h < kHalves; ++h) x_row[h] += x_step;
    // The chunk lies in one group: out += s * (sum x*q - z * sum x), with the MMA's offset
    // (bf16: 128) joining z.
    const int group = args.group_magic == 0 ? chunk : int(__umulhi(uint32_t(chunk), args.group_magic));
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
      const unsigned idx = unsigned(group) * unsigned(args.n) + unsigned(cols[t]);  // < 2^31 (launcher)
      const float s = to_float(__ldg(scales + idx));
      float z = HAS_ZEROS ? to_float(__ldg(zeros + idx)) : 8.0f;
      z += MmaDequant<XT>::kOffset;
#pragma unroll
      for (int h = 0; h < kHalves; ++h) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          total[h][t][e] = fmaf(s, fmaf(-z, xsum[h][e], acc[h][t / 2][2 * (t % 2) + e]), total[h][t][e]);
        }
      }
    }
  }

  // The warps' partial sums meet in shared memory, each in its own ring (its copies have all
  // landed); one thread per output adds them in warp order.
  async_copy_wait<0>();
  float* const partial = reinterpret_cast<float*>(mma_ring + warp * (kMmaStages * kStage));
#pragma unroll
  for (int h = 0; h < kHalves; ++h) {
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
#pragma unroll
      for (int e = 0; e < 2; ++e) partial[(8 * h + 2 * c + e) * kRows + 8 * t + g] = total[h][t][e];
    }
  }
  __syncthreads();
  for (int o = threadIdx.x; o < M_TILE * kRows; o += blockDim.x) {
    const int row = o / kRows, col = n0 + o % kRows;
    if (row < args.m && col < args.n) {
      float sum = 0.0f;
      for (int w = 0; w < warps; ++w) sum += reinterpret_cast<const float*>(mma_ring + w * (kMmaStages * kStage))[o];
      if (args.bias != nullptr) sum += load_float(args.bias, args.bias_code, col);
      static_cast<XT*>(args.out)[row * args.stride_om + col] = from_float<XT>(sum);
    }
  }
}

}  // namespace fastcot
