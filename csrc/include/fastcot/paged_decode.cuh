// Split-KV paged decode attention (one query token per sequence, GQA) and its merge.
// Framework-free: raw pointers, sizes and a stream. The contract is on
// fastcot::PagedDecodeParams in fastcot/api.h.
//
// Block (sequence, KV head x query-head tile, split): up to G query heads of one GQA group
// read each cached key and value of their split once. D / 8 threads cover a token (8
// elements each: one 16-byte load for a 16-bit cache, 8 bytes for fp8), so a warp works on
// 32 / (D / 8) tokens at a time, kChunk of them per step. Each such team of threads keeps
// its own online-softmax state; teams are merged by shuffles, warps through shared memory,
// and splits by the merge kernel with their log2-sum-exp2.
//
// The memory pipeline: the split's slice of the block table is staged in shared memory
// (kTableSlots entries at a time), so a KV address costs a shared load, not an L2 round trip
// that gates the KV load behind it. Loads are never branched over: a token past the split's
// end reads the split's last token (an L1 hit) and is masked out of the softmax. Each step
// issues the next step's K loads right after its scores and the next V loads right after its
// P.V, so one step of K and V is always in flight behind the math, in the same registers.
#pragma once

#include <cstdint>
#include <cstring>

#include <cuda_fp8.h>

#include "fastcot/common.cuh"
#include "fastcot/fp8.cuh"

namespace fastcot {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
// Block-table entries a block stages in shared memory at a time (at least 2048 tokens).
constexpr int kTableSlots = 256;
static_assert(kTableSlots % kDecodeThreads == 0, "whole rounds of the block");

struct PagedDecodeArgs {
  const void* q;
  const void* k_cache;
  const void* v_cache;
  const int32_t* block_tables;
  const int32_t* seq_lens;
  void* out;
  float* part_out;  // [B, Hq, S, D]
  float* part_lse;  // [B, Hq, S]
  int q_heads;
  int group;        // Hq / Hkv
  int group_tiles;  // ceil(group / G)
  int num_splits;
  int block_shift;  // log2(block_size)
  int64_t stride_q_b;
  int64_t stride_q_h;
  int64_t stride_out_b;
  int64_t stride_out_h;
  int64_t stride_table_b;
  int64_t stride_slot;   // Hkv * D
  float qk_scale;
  float v_scale;
  int q_code;
};

// Raw storage for 8 cache elements and its widening to fp32.
template <typename CacheT>
struct KV8 {
  uint4 raw;
  __device__ __forceinline__ void load(const CacheT* p) { raw = __ldg(reinterpret_cast<const uint4*>(p)); }
  __host__ __device__ __forceinline__ void widen(float (&dst)[8]) const {
    unpack8_as_float(raw, static_cast<const CacheT*>(nullptr), dst);
  }
};

template <>
struct KV8<__nv_fp8_e4m3> {
  uint2 raw;
  __device__ __forceinline__ void load(const __nv_fp8_e4m3* p) {
    raw = __ldg(reinterpret_cast<const uint2*>(p));
  }
  // Each element times 2^-8: the launcher folds kE4m3ToHalfBias into qk_scale and v_scale.
  __host__ __device__ __forceinline__ void widen(float (&dst)[8]) const { e4m3x8_to_float_scaled(raw.x, raw.y, dst); }
};

// Online-softmax state of G query heads over the 8 dims this thread owns (base 2).
template <int G>
struct SoftmaxState {
  float m[G];
  float l[G];
  float acc[G][8];

  __device__ __forceinline__ void init() {
#pragma unroll
    for (int h = 0; h < G; ++h) {
      m[h] = -INFINITY;
      l[h] = 0.0f;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[h][e] = 0.0f;
    }
  }

  // Folds in another state of the same heads and dims (m2, l2, acc2 of head h).
  __device__ __forceinline__ void merge(int h, float m2, float l2, const float (&acc2)[8]) {
    const float top = fmaxf(m[h], m2);
    // Both empty: top is -inf and both weights must be 0, never exp2(-inf - -inf).
    const float a = top == -INFINITY ? 0.0f : exp2f(m[h] - top);
    const float b = top == -INFINITY ? 0.0f : exp2f(m2 - top);
    m[h] = top;
    l[h] = l[h] * a + l2 * b;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[h][e] = acc[h][e] * a + acc2[e] * b;
  }
};

template <typename CacheT, int D, int G>
struct DecodeTraits {
  static constexpr int kTeam = D / 8;          // threads per token
  static constexpr int kTeamsPerWarp = 32 / kTeam;
  static constexpr int kTeams = kDecodeWarps * kTeamsPerWarp;
  static constexpr int kChunk = G <= 4 ? 4 : 2;  // tokens per team per step (loads in flight)
  static constexpr int kTile = kTeams * kChunk;  // tokens per block per step
  static_assert(D % 8 == 0 && kTeam <= 32 && 32 % kTeam == 0, "head_dim must be 64, 128 or 256");
};

// Blocks an SM must hold, by query heads per block: registers capped at 128 up to G = 4 and
// at 255 for G = 8, whose query rows and accumulators need them. The split count is chosen
// from these (fastcot/kernels/cuda.py decode_blocks_per_sm mirrors them). An fp8 cache with
// D = 256 is two registers short of 128 on sm_80 and takes 3 blocks rather than spill.
template <typename CacheT, int D, int G>
constexpr int decode_min_blocks() {
  return G > 4 ? 2 : (sizeof(CacheT) == 1 && D > 128) ? 3 : 4;
}

template <typename CacheT, int D, int G>
__global__ void __launch_bounds__(kDecodeThreads, decode_min_blocks<CacheT, D, G>())
    paged_decode_kernel(const PagedDecodeArgs args) {
  using Traits = DecodeTraits<CacheT, D, G>;
  constexpr int kTeam = Traits::kTeam;
  constexpr int kChunk = Traits::kChunk;
  const int b = blockIdx.x;
  const int kv_head = blockIdx.y / args.group_tiles;
  const int g0 = (blockIdx.y % args.group_tiles) * G;  // first head of this tile within the group
  const int split = blockIdx.z;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int team = warp * Traits::kTeamsPerWarp + lane / kTeam;
  const int d0 = (lane % kTeam) * 8;

  const int seq_len = __ldg(args.seq_lens + b);
  const int per_split = int(ceil_div(ceil_div(seq_len, args.num_splits), Traits::kTile)) * Traits::kTile;
  const int start = split * per_split;
  const int end = min(start + per_split, seq_len);

  // Query rows pre-scaled by qk_scale; heads past the group are zero and never stored.
  float q[G][8];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    const bool real = g0 + h < args.group;
    const int64_t row = int64_t(b) * args.stride_q_b + int64_t(kv_head * args.group + g0 + h) * args.stride_q_h;
#pragma unroll
    for (int e = 0; e < 8; ++e) q[h][e] = real ? load_float(args.q, args.q_code, row + d0 + e) * args.qk_scale : 0.0f;
  }

  SoftmaxState<G> state;
  state.init();
  // This thread's 8 elements of KV head kv_head in slot 0; a slot is stride_slot further.
  const CacheT* k_cache = static_cast<const CacheT*>(args.k_cache) + (int64_t(kv_head) * D + d0);
  const CacheT* v_cache = static_cast<const CacheT*>(args.v_cache) + (int64_t(kv_head) * D + d0);
  const int32_t* table = args.block_tables + int64_t(b) * args.stride_table_b;
  const int block_mask = (1 << args.block_shift) - 1;

  // The split's block-table entries [window, window + kTableSlots), and the cache slots
  // (block * block_size + position, < 2^31: the launcher checks) of the kChunk tokens this
  // thread loads in the step starting at t0, clamped to the last token.
  __shared__ int32_t table_window[kTableSlots];
  int window = 0;
  const int last_block = (end - 1) >> args.block_shift;
  auto stage_table = [&](int first) {
    __syncthreads();  // every thread is done with the previous window
#pragma unroll
    for (int j = 0; j < kTableSlots / kDecodeThreads; ++j) {
      const int i = j * kDecodeThreads + int(threadIdx.x);
      table_window[i] = first + i <= last_block ? __ldg(table + first + i) : 0;
    }
    window = first;
    __syncthreads();
  };
  auto step_slots = [&](int t0, int32_t (&slot)[kChunk]) {
    // The window must hold the step's last block; a step never spans more than one window.
    if (((min(t0 + Traits::kTile, end) - 1) >> args.block_shift) >= window + kTableSlots) {
      stage_table(t0 >> args.block_shift);
    }
#pragma unroll
    for (int c = 0; c < kChunk; ++c) {
      const int t = min(t0 + c * Traits::kTeams + team, end - 1);
      slot[c] = (table_window[(t >> args.block_shift) - window] << args.block_shift) | (t & block_mask);
    }
  };

  KV8<CacheT> k[kChunk], v[kChunk];
  int32_t slot[kChunk] = {};
  auto at = [&](const CacheT* cache, int c) { return cache + int64_t(slot[c]) * args.stride_slot; };
  if (start < end) {
    stage_table(start >> args.block_shift);
    step_slots(start, slot);
#pragma unroll
    for (int c = 0; c < kChunk; ++c) {
      k[c].load(at(k_cache, c));
      v[c].load(at(v_cache, c));
    }
  }

  for (int t0 = start; t0 < end; t0 += Traits::kTile) {
    // The next step's slots; past the end they clamp to the last token (no branch, an L1 hit).
    step_slots(t0 + Traits::kTile, slot);
    const int visible = end - t0 - team;  // chunk c's token is visible when c * kTeams < visible

    float s[kChunk][G];
#pragma unroll
    for (int c = 0; c < kChunk; ++c) {
      float kf[8];
      k[c].widen(kf);
#pragma unroll
      for (int h = 0; h < G; ++h) {
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) dot = fmaf(q[h][e], kf[e], dot);
        // The team's lanes are adjacent, so xor offsets below kTeam stay inside it, and
        // every lane ends with the same (commutative) sum.
#pragma unroll
        for (int lanes = kTeam / 2; lanes > 0; lanes /= 2) dot += __shfl_xor_sync(0xFFFFFFFFu, dot, lanes);
        s[c][h] = c * Traits::kTeams < visible ? dot : -INFINITY;
      }
      k[c].load(at(k_cache, c));  // this chunk's K is consumed: fetch the next step's
    }

    // s becomes p = exp2(s - max). A head that has seen no visible key keeps m = -inf and is
    // shifted by 0 instead, so no exp2(-inf - -inf) is ever formed.
#pragma unroll
    for (int h = 0; h < G; ++h) {
      float top = state.m[h];
#pragma unroll
      for (int c = 0; c < kChunk; ++c) top = fmaxf(top, s[c][h]);
      const float shift = top == -INFINITY ? 0.0f : top;
      const float alpha = exp2f(state.m[h] - shift);
      float p_sum = 0.0f;
#pragma unroll
      for (int c = 0; c < kChunk; ++c) {
        s[c][h] = exp2f(s[c][h] - shift);
        p_sum += s[c][h];
      }
      state.m[h] = top;
      state.l[h] = state.l[h] * alpha + p_sum;
#pragma unroll
      for (int e = 0; e < 8; ++e) state.acc[h][e] *= alpha;
    }
#pragma unroll
    for (int c = 0; c < kChunk; ++c) {
      float vf[8];
      v[c].widen(vf);
#pragma unroll
      for (int h = 0; h < G; ++h) {
#pragma unroll
        for (int e = 0; e < 8; ++e) state.acc[h][e] = fmaf(s[c][h], vf[e], state.acc[h][e]);
      }
      v[c].load(at(v_cache, c));
    }
  }

  // Teams of a warp hold the same dims at lanes kTeam apart.
#pragma unroll
  for (int offset = kTeam; offset < 32; offset *= 2) {
#pragma unroll
    for (int h = 0; h < G; ++h) {
      const float m2 = __shfl_xor_sync(0xFFFFFFFFu, state.m[h], offset);
      const float l2 = __shfl_xor_sync(0xFFFFFFFFu, state.l[h], offset);
      float acc2[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) acc2[e] = __shfl_xor_sync(0xFFFFFFFFu, state.acc[h][e], offset);
      state.merge(h, m2, l2, acc2);
    }
  }

  __shared__ float warp_m[kDecodeWarps][G];
  __shared__ float warp_l[kDecodeWarps][G];
  __shared__ float warp_acc[kDecodeWarps][G][D];
  if (lane < kTeam) {
#pragma unroll
    for (int h = 0; h < G; ++h) {
      if (lane == 0) {
        warp_m[warp][h] = state.m[h];
        warp_l[warp][h] = state.l[h];
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) warp_acc[warp][h][d0 + e] = state.acc[h][e];
    }
  }
  __syncthreads();

  for (int idx = threadIdx.x; idx < G * D; idx += kDecodeThreads) {
    const int h = idx / D;
    const int d = idx % D;
    if (g0 + h >= args.group) continue;
    float top = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) top = fmaxf(top, warp_m[w][h]);
    float l = 0.0f, acc = 0.0f;
    if (top != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kDecodeWarps; ++w) {
        const float weight = exp2f(warp_m[w][h] - top);  // an empty warp has m = -inf: weight 0
        l += warp_l[w][h] * weight;
        acc += warp_acc[w][h][d] * weight;
      }
    }
    // An empty sequence or split has l == 0 and acc == 0: its output is 0, never 0/0.
    const float o = (l > 0.0f ? acc / l : 0.0f) * args.v_scale;
    const int head = kv_head * args.group + g0 + h;
    if (args.num_splits == 1) {
      store_float(args.out, args.q_code, int64_t(b) * args.stride_out_b + int64_t(head) * args.stride_out_h + d, o);
    } else {
      const int64_t row = (int64_t(b) * args.q_heads + head) * args.num_splits + split;
      args.part_out[row * D + d] = o;
      if (d == 0) args.part_lse[row] = l > 0.0f ? top + log2f(l) : -INFINITY;
    }
  }
}

// out[b, h] = the splits' normalized partial outputs weighted by their share of the
// softmax mass. Block (b, h), one thread per dim.
__global__ void __launch_bounds__(256) paged_decode_merge_kernel(const PagedDecodeArgs args, int head_dim) {
  const int b = blockIdx.x;
  const int head = blockIdx.y;
  const int d = threadIdx.x;
  const int64_t row0 = (int64_t(b) * args.q_heads + head) * args.num_splits;
  float top = -INFINITY;
  for (int s = 0; s < args.num_splits; ++s) top = fmaxf(top, args.part_lse[row0 + s]);
  float total = 0.0f, acc = 0.0f;
  if (top != -INFINITY) {
    for (int s = 0; s < args.num_splits; ++s) {
      const float weight = exp2f(args.part_lse[row0 + s] - top);
      total += weight;
      acc += weight * args.part_out[(row0 + s) * head_dim + d];
    }
  }
  const float o = total > 0.0f ? acc / total : 0.0f;
  store_float(args.out, args.q_code, int64_t(b) * args.stride_out_b + int64_t(head) * args.stride_out_h + d, o);
}

}  // namespace fastcot
