// Barriers and warp collectives: each thread of a block posts its arrival (call site, mask,
// value) and waits as a fiber until all the threads it names have arrived; mismatched sites or
// masks end the launch (fail) with both sites in the message.
#include <algorithm>
#include <cstring>
#include <string>

#include "runtime.h"

namespace simt {

// ---- barriers ----------------------------------------------------------------------------------

int block_barrier(BarrierOp op, int predicate, const Where& where) {
  Worker& w = worker_here(where);
  Fiber& f = *w.running;
  if (w.at_barrier == 0) {
    w.barrier_site = where;
    w.barrier_op = op;
    w.barrier_value = op == BarrierOp::kAnd ? 1 : 0;
  } else if (!same_site(w.barrier_site, where)) {
    fail(("__syncthreads at two call sites in one block: " + std::to_string(w.at_barrier) + " threads wait at " +
          where_text(w.barrier_site) + ", this one reached another")
             .c_str(),
         where);
  }
  if (op == BarrierOp::kCount) w.barrier_value += predicate;
  if (op == BarrierOp::kAnd) w.barrier_value &= predicate;
  if (op == BarrierOp::kOr) w.barrier_value |= predicate;
  f.state = State::kBarrier;
  if (++w.at_barrier == w.live) {
    release_barrier(w);  // also makes this thread runnable again
  } else {
    yield(w);
  }
  return int(f.result);
}

// ---- warp collectives --------------------------------------------------------------------------

namespace {

// The lane a shuffle reads, by PTX's rules for shfl.sync with c = ((32 - width) << 8) | clamp:
// lanes form segments of `width`; up and down never leave the segment, xor may read an
// earlier one but not a later one, and a refused source returns the caller's own value.
int source_lane(WarpOp op, int lane, int arg, int width) {
  const int first = lane & ~(width - 1);
  const int last = first + width - 1;
  switch (op) {
    case WarpOp::kShflIdx: return first | (arg & (width - 1));
    case WarpOp::kShflUp: return lane - arg >= first ? lane - arg : lane;
    case WarpOp::kShflDown: return lane + arg <= last ? lane + arg : lane;
    case WarpOp::kShflXor: return (lane ^ arg) <= last ? (lane ^ arg) : lane;
    default: return lane;
  }
}

uint64_t lane_result(const Pending& p, int lane) {
  const unsigned mask = p.mask;
  uint64_t r = 0;
  switch (p.op) {
    case WarpOp::kSync: return 0;
    case WarpOp::kShflIdx:
    case WarpOp::kShflUp:
    case WarpOp::kShflDown:
    case WarpOp::kShflXor: {
      const int src = p.source[lane];
      return (mask >> src & 1u) ? p.value[src] : ~uint64_t(0);  // a lane outside the mask: undefined
    }
    case WarpOp::kBallot:
      for (int l = 0; l < 32; ++l) r |= uint64_t((mask >> l & 1u) && p.value[l] != 0) << l;
      return r;
    case WarpOp::kMatchAny:
      for (int l = 0; l < 32; ++l) r |= uint64_t((mask >> l & 1u) && p.value[l] == p.value[lane]) << l;
      return r;
    case WarpOp::kMatchAll:
      for (int l = 0; l < 32; ++l)
        if ((mask >> l & 1u) && p.value[l] != p.value[lane]) return 0;
      return mask;
    default: break;
  }
  bool first = true;
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1u)) continue;
    const uint32_t u = uint32_t(p.value[l]);
    const int32_t s = int32_t(u);
    uint32_t acc = uint32_t(r);
    if (first) {
      acc = u;
      first = false;
    } else if (p.op == WarpOp::kReduceAddU) acc += u;
    else if (p.op == WarpOp::kReduceMinU) acc = std::min(acc, u);
    else if (p.op == WarpOp::kReduceMaxU) acc = std::max(acc, u);
    else if (p.op == WarpOp::kReduceMinS) acc = uint32_t(std::min(int32_t(acc), s));
    else if (p.op == WarpOp::kReduceMaxS) acc = uint32_t(std::max(int32_t(acc), s));
    else if (p.op == WarpOp::kReduceAnd) acc &= u;
    else if (p.op == WarpOp::kReduceOr) acc |= u;
    else acc ^= u;
    r = acc;
  }
  return r;
}

}  // namespace

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t value, int lane_arg, int width, const Where& where) {
  Worker& w = worker_here(where);
  Fiber& f = *w.running;
  const int lane = int(f.thread.linear % 32);
  const unsigned bit = 1u << lane;
  Warp& warp = w.warps[f.thread.linear / 32];
  // Messages are built only on failure: this is the emulator's hottest path.
  auto what = [&] { return std::string(op_name(op)) + " with mask " + hex(mask); };
  if (!(mask & bit)) fail((what() + " from lane " + std::to_string(lane) + ", which is not in the mask").c_str(), where);
  if (mask & ~warp.live) {
    fail((what() + " names lanes " + hex(mask & ~warp.live) + " that have exited (live lanes " + hex(warp.live) + ")")
             .c_str(),
         where);
  }
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    fail((what() + ": width " + std::to_string(width) + " is not a power of two from 1 to 32").c_str(), where);
  }
  Pending* p = nullptr;
  for (Pending& q : warp.pending) {
    if (!(q.mask & mask)) continue;
    if (q.mask != mask || q.op != op || !same_site(q.site, where)) {
      fail((what() + " while lanes " + hex(q.arrived) + " of this warp wait at " + op_name(q.op) + " with mask " +
            hex(q.mask) + " at " + where_text(q.site) + ": one collective, one call site, one mask")
               .c_str(),
           where);
    }
    p = &q;
  }
  if (p == nullptr) {
    p = &warp.pending.emplace_back();
    p->op = op;
    p->mask = mask;
    p->arrived = 0;
    p->site = where;
  }
  p->value[lane] = value;
  p->source[lane] = int8_t(source_lane(op, lane, lane_arg, width));
  p->arrived |= bit;
  if (p->arrived != p->mask) {
    f.state = State::kWarp;
    yield(w);
    return f.result;
  }
  const unsigned first = f.thread.linear & ~31u;
  for (unsigned m = p->mask; m != 0; m &= m - 1) {
    const int l = __builtin_ctz(m);
    Fiber& g = w.fibers[first + l];
    g.result = lane_result(*p, l);
    g.state = State::kRunnable;
  }
  warp.pending.erase(warp.pending.begin() + (p - warp.pending.data()));
  return f.result;
}

}  // namespace simt
