// Split-KV paged decode attention (one query token per sequence, GQA) and its merge.
// Framework-free: raw pointers, sizes and a stream. The contract is on
// fastcot::PagedDecodeParams in fastcot/api.h.
//
// Block (sequence, KV head x query-head tile, split); its 4 warps take turns over the split's
// tokens, kWarpTokens each per step. The query heads of the tile (at most 8) are the rows of
// m16n8k16 tensor-core products, so every key and value is read once for the whole GQA tile
// and each score and exponential is formed once: S = Q.K^T (K as the B operand, 8 tokens per
// product) and O += P.V (P as the A operand straight from S's accumulators, 16 tokens per
// product). A lane's loads are its fragments: lane (g, c) loads quarter c of the head dims of
// the key in column g of each score tile (the order of the D terms of a dot product is free, so
// Q's fragments use the same order), and dims [g D/8, (g+1) D/8) of the values in rows 2c,
// 2c+1, 2c+8, 2c+9 of each P.V step, paired into B fragments with byte permutes; the tokens
// behind tiles and rows are numbered so that each lane's are consecutive (one table lookup). Each warp keeps an online softmax per row (base 2); warps
// merge through shared memory, splits in the merge kernel with their log2-sum-exp2.
//
// The memory pipeline: the split's slice of the block table is staged in shared memory
// (kTableSlots entries at a time), so a KV address costs a shared load, not an L2 round trip
// that gates the KV load behind it. Loads are never branched over: a token past the split's
// end reads the split's last token (an L1 hit) and is masked out of the softmax. Each step
// issues the next step's K loads right after its scores and the next V loads right after its
// P.V, in the same registers: 8 KB of K and V (D = 128) per warp always in flight.
//
// fp8 caches: the products run in float16 on the widened bytes (fastcot/fp8.cuh: a conversion
// instruction on sm_89+, bit operations on sm_80, giving the element times 2^kE4m3HalfExponent,
// which the kernel folds into its score and output scales); q is rounded to float16.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <cuda_fp8.h>

#include "fastcot/common.cuh"
#include "fastcot/fp8.cuh"

namespace fastcot {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeThreads = kDecodeWarps * 32;
// Block-table entries a block stages in shared memory at a time (at least 2048 tokens).
constexpr int kTableSlots = 256;
static_assert(kTableSlots % kDecodeThreads == 0, "whole rounds of the block");
constexpr int kSplitAlign = 16;

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

template <typename CacheT, int D>
struct DecodeTraits {
  static constexpr int kElem = sizeof(CacheT);
  static constexpr bool kFp8 = kElem == 1;
  using MmaT = std::conditional_t<kFp8, __half, CacheT>;
  static constexpr int kWarpTokens = 32 / kElem;   // a warp's tokens per step: 8 KB of K and V at D = 128
  static constexpr int kTile = kDecodeWarps * kWarpTokens;  // the block's tokens per step
  static constexpr int kKTiles = kWarpTokens / 8;   // n8 tiles of scores per warp step
  static constexpr int kVSteps = kWarpTokens / 16;  // k16 steps of P.V per warp step
  static constexpr int kDSteps = D / 16;            // k16 steps of Q.K
  static constexpr int kDTiles = D / 8;             // n8 tiles of the output
  static constexpr int kKWords = D * kElem / 16;    // 32-bit words of K a lane loads per token (D / 4 dims)
  static constexpr int kVWords = D * kElem / 32;    // and of V (D / 8 dims)
  // K and V images are the elements times 2^kE4m3HalfExponent (fp8) or exact: scores and
  // outputs take the inverse.
  static constexpr float kImageScale = kFp8 ? (kE4m3HalfExponent == 0 ? 1.0f : 256.0f) : 1.0f;
  static_assert(kE4m3HalfExponent == 0 || kE4m3HalfExponent == -8, "kImageScale");
  // Up to D = 128 the next step's K and V are loaded while this step computes; at D = 256 that
  // would not fit in 255 registers, so V is loaded after the scores and K after the P.V.
  static constexpr bool kPrefetch = D <= 128;
  static_assert(D == 64 || D == 128 || D == 256, "head_dim must be 64, 128 or 256");
};

// Blocks an SM must hold: registers capped at 168 (D <= 128) or 255 (D = 256). The split count
// is chosen from these (fastcot/kernels/cuda.py decode_blocks_per_sm mirrors the D <= 128 case).
template <int D>
constexpr int decode_min_blocks() {
  return D > 128 ? 2 : 3;
}

// (lo, hi) rounded to a pair of 16-bit floats, lo in the low half.
template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  uint32_t bits;
  if constexpr (std::is_same<T, __half>::value) {
    const __half2 pair = __floats2half2_rn(lo, hi);
    memcpy(&bits, &pair, sizeof(bits));
  } else {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
    memcpy(&bits, &pair, sizeof(bits));
  }
  return bits;
}

// W consecutive 32-bit words (16-byte loads that skip L1; 8 bytes for W = 2).
template <int W>
__device__ __forceinline__ void load_words(const uint8_t* src, uint32_t (&dst)[W]) {
  if constexpr (W % 4 == 0) {
#pragma unroll
    for (int i = 0; i < W / 4; ++i) {
      const uint4 v = ldg_stream(reinterpret_cast<const uint4*>(src) + i);
      dst[4 * i] = v.x;
      dst[4 * i + 1] = v.y;
      dst[4 * i + 2] = v.z;
      dst[4 * i + 3] = v.w;
    }
  } else {
    static_assert(W == 2, "8 or a multiple of 16 bytes");
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(src));
    dst[0] = v.x;
    dst[1] = v.y;
  }
}

template <typename CacheT, int D, int G>
__global__ void __launch_bounds__(kDecodeThreads, decode_min_blocks<D>())
    paged_decode_kernel(const PagedDecodeArgs args) {
  // Launched with PDL on sm_90 (csrc/paged_decode.cu): every input (q, the cache, the tables)
  // may be written by the kernel before, so the wait comes before any global access.
  pdl_launch_dependents();
  pdl_wait();
  using Traits = DecodeTraits<CacheT, D>;
  using MmaT = typename Traits::MmaT;
  constexpr int kElem = Traits::kElem;
  constexpr int kWarpTokens = Traits::kWarpTokens;
  static_assert(G <= 8, "at most 8 query heads: the rows 0..7 of the products");
  const int b = blockIdx.x;
  const int kv_head = blockIdx.y / args.group_tiles;
  const int g0 = (blockIdx.y % args.group_tiles) * G;  // first head of this tile within the group
  const int split = blockIdx.z;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int row = lane / 4;   // fragment row: query head g0 + row; K token row of an n8 tile; V column
  const int quad = lane % 4;  // fragment column pair

  const int seq_len = __ldg(args.seq_lens + b);
  // Splits start at multiples of kSplitAlign tokens, so that each lane's group of consecutive
  // tokens (at most 8) lies in one cache block; not of kTile, which would leave splits empty.
  const int per_split = int(ceil_div(ceil_div(seq_len, args.num_splits), kSplitAlign)) * kSplitAlign;
  const int start = split * per_split;
  const int end = min(start + per_split, seq_len);

  // Q's A fragments, [k16 step][lane]: row `row`, dims 4j..4j+3 of quarter `quad`, in the order
  // K's B fragments hold them (fp8 widened by bit operations: 4j, 4j + 2, then 4j + 1, 4j + 3).
  // Heads past the group are zero rows and never stored.
  __shared__ uint4 q_frag[Traits::kDSteps][32];
  if (warp == 0) {
    const bool real = row < G && g0 + row < args.group;  // (fp8: q rounded to float16)
    const int64_t q_row = int64_t(b) * args.stride_q_b + int64_t(kv_head * args.group + g0 + row) * args.stride_q_h;
#pragma unroll
    for (int j = 0; j < Traits::kDSteps; ++j) {
      float x[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        x[e] = real ? load_float(args.q, args.q_code, q_row + quad * (D / 4) + 4 * j + e) : 0.0f;
      }
      // Rows 8..15 of A are zero: the tensor core's rows g + 8 stay zero throughout.
      q_frag[j][lane] = Traits::kFp8 && kE4m3EvenOddPairs
                            ? make_uint4(pack_pair<MmaT>(x[0], x[2]), 0u, pack_pair<MmaT>(x[1], x[3]), 0u)
                            : make_uint4(pack_pair<MmaT>(x[0], x[1]), 0u, pack_pair<MmaT>(x[2], x[3]), 0u);
    }
  }
  __syncthreads();

  const float qk_scale = args.qk_scale * Traits::kImageScale;
  float m = -INFINITY;  // the row's running max (scaled scores, base 2), the same in its 4 lanes
  float l = 0.0f;       // this lane's share of the row's sum of exp2(score - m)
  // O[row][(2 quad + e) D / 8 + j] in acc[j][e]; acc[j][2..3] are the zero rows g + 8 (kept as
  // accumulators so that every product works in place).
  float acc[Traits::kDTiles][4];
#pragma unroll
  for (int j = 0; j < Traits::kDTiles; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

  // This lane's K quarter and V slice of KV head kv_head in slot 0; a slot is stride_bytes further.
  const uint32_t stride_bytes = uint32_t(args.stride_slot) * kElem;  // < 2^31: the launcher checks
  const uint8_t* k_base = static_cast<const uint8_t*>(args.k_cache) + (int64_t(kv_head) * D + quad * (D / 4)) * kElem;
  const uint8_t* v_base = static_cast<const uint8_t*>(args.v_cache) + (int64_t(kv_head) * D + row * (D / 8)) * kElem;
  const int32_t* table = args.block_tables + int64_t(b) * args.stride_table_b;
  const int block_mask = (1 << args.block_shift) - 1;

  // The split's block-table entries [window, window + kTableSlots); cache slots (block *
  // block_size + position, < 2^31: the launcher checks) of the tokens this lane loads in the
  // step starting at t0, clamped to the last token.
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
  // Token 8 i + n of the warp's step is kKTiles n + i (the order of a softmax's terms is free):
  // a lane's K tokens (column `row` of the kKTiles score tiles) are then kKTiles consecutive
  // ones and its V tokens (rows 2 quad, 2 quad + 1, 2 quad + 8, 2 quad + 9 of the P.V steps)
  // 2 kKTiles consecutive ones, inside one cache block (blocks hold at least 8 tokens): one
  // table lookup per group. A group is its first token's slot and how far past it tokens may
  // go before they clamp to the last one.
  constexpr int kKTiles = Traits::kKTiles;
  int32_t k_slot = 0, k_room = 0, v_slot = 0, v_room = 0;
  auto group_slot = [&](int first, int32_t& slot, int32_t& room) {
    const int t = min(first, end - 1);
    slot = (table_window[(t >> args.block_shift) - window] << args.block_shift) | (t & block_mask);
    room = max(end - 1 - first, 0);
  };
  auto ensure_window = [&](int t0) {
    // The window must hold the step's last block; a step never spans more than one window.
    if (((min(t0 + Traits::kTile, end) - 1) >> args.block_shift) >= window + kTableSlots) {
      stage_table(t0 >> args.block_shift);
    }
  };
  auto k_slots = [&](int t0) { group_slot(t0 + warp * kWarpTokens + kKTiles * row, k_slot, k_room); };
  auto v_slots = [&](int t0) { group_slot(t0 + warp * kWarpTokens + 2 * kKTiles * quad, v_slot, v_room); };

  uint32_t k_raw[kKTiles][Traits::kKWords];
  uint32_t v_raw[Traits::kVSteps][4][Traits::kVWords];
  auto load_k = [&] {
    const uint8_t* first = k_base + uint64_t(uint32_t(k_slot)) * stride_bytes;
#pragma unroll
    for (int i = 0; i < kKTiles; ++i) load_words(first + uint64_t(uint32_t(min(i, k_room))) * stride_bytes, k_raw[i]);
  };
  auto load_v = [&] {
    const uint8_t* first = v_base + uint64_t(uint32_t(v_slot)) * stride_bytes;
#pragma unroll
    for (int i = 0; i < Traits::kVSteps; ++i) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        // P.V step i, row r of the lane's B fragment: score tile 2 i + (r >> 1), column 2 quad + (r & 1).
        const int j = kKTiles * (r & 1) + 2 * i + (r >> 1);
        load_words(first + uint64_t(uint32_t(min(j, v_room))) * stride_bytes, v_raw[i][r]);
      }
    }
  };
  if (start < end) {
    stage_table(start >> args.block_shift);
    k_slots(start);
    load_k();
    if constexpr (Traits::kPrefetch) {
      v_slots(start);
      load_v();
    }
  }

  for (int t0 = start; t0 < end; t0 += Traits::kTile) {
    if constexpr (Traits::kPrefetch) {
      // The next step's slots; past the end they clamp to the last token (L1 hits).
      ensure_window(t0 + Traits::kTile);
      k_slots(t0 + Traits::kTile);
      v_slots(t0 + Traits::kTile);
    } else {
      v_slots(t0);
    }

    // s[i][e]: the score of head `row` and token kKTiles (2 quad + e) + i of the warp's step.
    float s[Traits::kKTiles][4];
#pragma unroll
    for (int i = 0; i < Traits::kKTiles; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.0f;
#pragma unroll
    for (int j = 0; j < Traits::kDSteps; ++j) {
      const uint4 q4 = q_frag[j][lane];
      const uint32_t a[4] = {q4.x, q4.y, q4.z, q4.w};
#pragma unroll
      for (int i = 0; i < Traits::kKTiles; ++i) {
        uint32_t bk[2];
        if constexpr (Traits::kFp8) {
          e4m3x4_to_half2x2(k_raw[i][j], bk[0], bk[1]);
        } else {
          bk[0] = k_raw[i][2 * j];
          bk[1] = k_raw[i][2 * j + 1];
        }
        mma_16816<MmaT>(s[i], a, bk);
      }
    }
    if constexpr (Traits::kPrefetch) {
      load_k();  // this step's K is consumed: fetch the next step's
    } else {
      load_v();  // this step's V, while the softmax runs
    }

    // Online softmax of the row. A row that has seen no visible key keeps m = -inf and is
    // shifted by 0 instead, so no exp2(-inf - -inf) is ever formed.
    const int visible = end - (t0 + warp * kWarpTokens + 2 * kKTiles * quad);  // s[i][e] is visible when
    float top = m;                                                              // kKTiles e + i < this
#pragma unroll
    for (int i = 0; i < Traits::kKTiles; ++i) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[i][e] = kKTiles * e + i < visible ? s[i][e] * qk_scale : -INFINITY;
        top = fmaxf(top, s[i][e]);
      }
    }
    top = fmaxf(top, __shfl_xor_sync(0xFFFFFFFFu, top, 1));
    top = fmaxf(top, __shfl_xor_sync(0xFFFFFFFFu, top, 2));
    const float shift = top == -INFINITY ? 0.0f : top;
    const float alpha = exp2f(m - shift);
    m = top;
    float p_sum = 0.0f;
#pragma unroll
    for (int i = 0; i < Traits::kKTiles; ++i) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[i][e] = exp2f(s[i][e] - shift);
        p_sum += s[i][e];
      }
    }
    l = l * alpha + p_sum;
#pragma unroll
    for (int j = 0; j < Traits::kDTiles; ++j) {
      acc[j][0] *= alpha;
      acc[j][1] *= alpha;
    }

    // O += P.V: P's A fragment is two score tiles; V's B fragments pair the lane's rows
    // (2 quad, 2 quad + 1) and (2 quad + 8, 2 quad + 9) dim by dim.
#pragma unroll
    for (int i = 0; i < Traits::kVSteps; ++i) {
      const uint32_t pa[4] = {pack_pair<MmaT>(s[2 * i][0], s[2 * i][1]), 0u,
                              pack_pair<MmaT>(s[2 * i + 1][0], s[2 * i + 1][1]), 0u};
#pragma unroll
      for (int w = 0; w < Traits::kVWords; ++w) {
        const uint32_t t0w = v_raw[i][0][w], t1w = v_raw[i][1][w], t2w = v_raw[i][2][w], t3w = v_raw[i][3][w];
        if constexpr (Traits::kFp8) {
          // Word w holds dims 4w..4w+3: byte permutes pair dims 4w, 4w + 1 and 4w + 2, 4w + 3 of
          // two tokens, each widening gives two of them.
          uint32_t b[4][2];
          constexpr uint32_t kLow = kE4m3EvenOddPairs ? 0x5410 : 0x5140, kHigh = kE4m3EvenOddPairs ? 0x7632 : 0x7362;
          e4m3x4_to_half2x2(__byte_perm(t0w, t1w, kLow), b[0][0], b[1][0]);
          e4m3x4_to_half2x2(__byte_perm(t0w, t1w, kHigh), b[2][0], b[3][0]);
          e4m3x4_to_half2x2(__byte_perm(t2w, t3w, kLow), b[0][1], b[1][1]);
          e4m3x4_to_half2x2(__byte_perm(t2w, t3w, kHigh), b[2][1], b[3][1]);
#pragma unroll
          for (int k = 0; k < 4; ++k) mma_16816<MmaT>(acc[4 * w + k], pa, b[k]);
        } else {
          // Word w holds dims 2w, 2w + 1: low and high halves of two tokens side by side.
          const uint32_t b0[2] = {__byte_perm(t0w, t1w, 0x5410), __byte_perm(t2w, t3w, 0x5410)};
          const uint32_t b1[2] = {__byte_perm(t0w, t1w, 0x7632), __byte_perm(t2w, t3w, 0x7632)};
          mma_16816<MmaT>(acc[2 * w], pa, b0);
          mma_16816<MmaT>(acc[2 * w + 1], pa, b1);
        }
      }
    }
    if constexpr (Traits::kPrefetch) {
      load_v();
    } else {
      ensure_window(t0 + Traits::kTile);
      k_slots(t0 + Traits::kTile);
      load_k();
    }
  }

  // The row's sum over its 4 lanes (they share m), then the warps' states through shared memory.
  l += __shfl_xor_sync(0xFFFFFFFFu, l, 1);
  l += __shfl_xor_sync(0xFFFFFFFFu, l, 2);
  __shared__ float warp_m[kDecodeWarps][G];
  __shared__ float warp_l[kDecodeWarps][G];
  __shared__ float warp_acc[kDecodeWarps][G][D];
  if (row < G) {
    if (quad == 0) {
      warp_m[warp][row] = m;
      warp_l[warp][row] = l;
    }
#pragma unroll
    for (int j = 0; j < Traits::kDTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) warp_acc[warp][row][(2 * quad + e) * (D / 8) + j] = acc[j][e];
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
    float l_total = 0.0f, o_sum = 0.0f;
    if (top != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kDecodeWarps; ++w) {
        const float weight = exp2f(warp_m[w][h] - top);  // an empty warp has m = -inf: weight 0
        l_total += warp_l[w][h] * weight;
        o_sum += warp_acc[w][h][d] * weight;
      }
    }
    // An empty sequence or split has l == 0 and acc == 0: its output is 0, never 0/0.
    const float o = (l_total > 0.0f ? o_sum / l_total * Traits::kImageScale : 0.0f) * args.v_scale;
    const int head = kv_head * args.group + g0 + h;
    if (args.num_splits == 1) {
      store_float(args.out, args.q_code, int64_t(b) * args.stride_out_b + int64_t(head) * args.stride_out_h + d, o);
    } else {
      const int64_t row_index = (int64_t(b) * args.q_heads + head) * args.num_splits + split;
      args.part_out[row_index * D + d] = o;
      if (d == 0) args.part_lse[row_index] = l_total > 0.0f ? top + log2f(l_total) : -INFINITY;
    }
  }
}

// out[b, h] = the splits' normalized partial outputs weighted by their share of the
// softmax mass. Block (b, h), one thread per dim.
__global__ void __launch_bounds__(256) paged_decode_merge_kernel(const PagedDecodeArgs args, int head_dim) {
  pdl_launch_dependents();
  pdl_wait();  // the partials come from the attention kernel just before
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
