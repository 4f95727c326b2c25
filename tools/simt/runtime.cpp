// The SIMT scheduler: each CUDA thread of a block is a fiber on the worker's OS thread, resumed
// in the chosen order (forward, reverse or random) until it reaches a barrier, a warp
// collective (collectives.cpp) or its end; a block in which no thread can move is a deadlock.
// Also the block's shared memory, and failures: any ends the launch with a message naming
// the kernel, block, thread and line.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "runtime.h"

#if SIMT_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace simt {

thread_local ThreadState* t_current = nullptr;

namespace {

thread_local Worker* t_worker = nullptr;

constexpr size_t kArenaBytes = 512 * 1024;  // > 227 KiB dynamic + 48 KiB static + redzones
constexpr size_t kRedzone = SIMT_ASAN ? 64 : 0;
constexpr unsigned char kPoison = 0xFF;  // NaN as float, -1 as int: unwritten shared memory shows

size_t stack_bytes() {
  const char* env = std::getenv("SIMT_STACK_KB");
  return size_t(env ? std::atoi(env) : (SIMT_ASAN ? 256 : 64)) * 1024;
}

}  // namespace

std::string hex(unsigned v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

const char* op_name(WarpOp op) {
  static const char* names[] = {"__syncwarp",       "__shfl_sync",       "__shfl_up_sync",    "__shfl_down_sync",
                                "__shfl_xor_sync",  "__ballot_sync",     "__match_any_sync",  "__match_all_sync",
                                "__reduce_add_sync", "__reduce_min_sync", "__reduce_max_sync", "__reduce_min_sync",
                                "__reduce_max_sync", "__reduce_and_sync", "__reduce_or_sync",  "__reduce_xor_sync"};
  return names[int(op)];
}

bool same_site(const Where& a, const Where& b) {
  return a.line() == b.line() && a.column() == b.column() &&
         (a.file_name() == b.file_name() || std::strcmp(a.file_name(), b.file_name()) == 0);
}

Worker& worker_here(const Where& where) {
  if (t_worker == nullptr || t_worker->running == nullptr) {
    std::fprintf(stderr, "simt: device code called outside a kernel at %s\n", where_text(where).c_str());
    std::abort();
  }
  return *t_worker;
}

// ---- switching -------------------------------------------------------------------------------

namespace {

void resume(Worker& w, Fiber& f) {
  w.running = &f;
  t_current = &f.thread;
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(&w.scheduler_fake_stack, f.stack, f.stack_size);
#endif
  switch_context(w.scheduler, f.context);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(w.scheduler_fake_stack, nullptr, nullptr);
#endif
  w.running = nullptr;
  t_current = nullptr;
}

}  // namespace

void yield(Worker& w) {
  Fiber& f = *w.running;
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(&f.asan_fake_stack, w.scheduler_stack, w.scheduler_stack_size);
#endif
  switch_context(f.context, w.scheduler);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(f.asan_fake_stack, &w.scheduler_stack, &w.scheduler_stack_size);
#endif
}

namespace {

[[noreturn]] void leave_for_good(Worker& w) {
  Fiber& f = *w.running;
  f.state = State::kDone;
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(nullptr, w.scheduler_stack, w.scheduler_stack_size);
#endif
  Context dead;
  switch_context(dead, w.scheduler);
  std::abort();  // never resumed
}

}  // namespace

void release_barrier(Worker& w) {
  for (Fiber& f : w.fibers) {
    if (f.state == State::kBarrier) {
      f.state = State::kRunnable;
      f.result = uint64_t(w.barrier_value);
    }
  }
  w.at_barrier = 0;
}

namespace {

void fiber_main();

}  // namespace

std::string where_text(const Where& where) {
  return std::string(where.file_name()) + ":" + std::to_string(where.line()) + " (in " + where.function_name() + ")";
}

void record_failure(Worker& w, const std::string& what) {
  std::string message = "kernel " + w.launch->name + ", block (" + std::to_string(w.block_idx.x) + "," +
                        std::to_string(w.block_idx.y) + "," + std::to_string(w.block_idx.z) + ")";
  if (w.running != nullptr) {
    const uint3 t = w.running->thread.thread_idx;
    message += ", thread (" + std::to_string(t.x) + "," + std::to_string(t.y) + "," + std::to_string(t.z) + ")";
  }
  message += ": " + what;
  w.failed = true;
  std::lock_guard<std::mutex> lock(w.launch->mutex);
  if (!w.launch->failed.exchange(true)) {
    w.launch->failure = message;
    if (std::getenv("SIMT_QUIET") == nullptr) std::fprintf(stderr, "simt: %s\n", message.c_str());
    if (std::getenv("SIMT_ABORT") != nullptr) std::abort();  // keep the stack for a debugger
  }
}

void fail(const char* what, const Where& where) {
  Worker& w = worker_here(where);
  record_failure(w, std::string(what) + " at " + where_text(where));
  leave_for_good(w);
}

unsigned live_lanes() {
  Worker& w = worker_here(Where::current());
  return w.warps[w.running->thread.linear / 32].live;
}

void yield_fiber() { yield(worker_here(Where::current())); }

void check_launch_bounds(unsigned max_threads, const Where& where) {
  Worker& w = worker_here(where);
  if (w.launch->threads > max_threads) {
    w.launch->error = cudaErrorLaunchOutOfResources;
    fail(("launched with " + std::to_string(w.launch->threads) + " threads per block, more than its __launch_bounds__(" +
          std::to_string(max_threads) + ") (a GPU refuses this launch: too many resources requested)").c_str(),
         where);
  }
}

// ---- shared memory -----------------------------------------------------------------------------

void* shared_variable(const void* key, size_t bytes, size_t align, const char* name, const Where& where) {
  Worker& w = worker_here(where);
  for (const auto& [k, ptr] : w.variables) {
    if (k == key) return ptr;
  }
  // The first thread of this block to reach the declaration places the variable.
  const size_t offset = (w.arena_used + align - 1) / align * align;
  w.static_bytes += bytes;
  if (w.static_bytes > kStaticSharedLimit) {
    fail(("__shared__ " + std::string(name) + " brings the kernel's static shared memory to " +
          std::to_string(w.static_bytes) + " bytes; nvcc allows 48 KiB")
             .c_str(),
         where);
  }
  if (w.static_bytes + w.dynamic_bytes > device().smem_per_block_optin) {
    fail(("__shared__ " + std::string(name) + ": " + std::to_string(w.static_bytes) + " bytes static + " +
          std::to_string(w.dynamic_bytes) + " dynamic exceed the " + std::to_string(device().smem_per_block_optin) +
          " bytes a block of " + device().name + " may have")
             .c_str(),
         where);
  }
  char* ptr = w.arena + offset;
#if SIMT_ASAN
  ASAN_UNPOISON_MEMORY_REGION(ptr, bytes);
#endif
  std::memset(ptr, kPoison, bytes);
  w.arena_used = offset + bytes + kRedzone;
  w.variables.emplace_back(key, ptr);
  return ptr;
}

void* dynamic_shared_memory(size_t) { return worker_here(Where::current()).arena; }

// ---- blocks ------------------------------------------------------------------------------------

Worker::~Worker() {
  for (Fiber& f : fibers) {
    if (f.stack != nullptr) munmap(f.stack - getpagesize(), f.stack_size + getpagesize());
  }
  if (arena != nullptr) munmap(arena, kArenaBytes);
}

namespace {

char* map_or_die(size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    std::perror("simt: mmap");
    std::abort();
  }
  return static_cast<char*>(p);
}

void prepare(Worker& w, Launch& launch, uint64_t linear) {
  const KernelLaunch& k = *launch.kernel;
  const unsigned n = launch.threads;
  if (w.fibers.size() < n) w.fibers.resize(n);
  for (unsigned i = 0; i < n; ++i) {
    Fiber& f = w.fibers[i];
    if (f.stack == nullptr) {
      const size_t page = getpagesize();
      f.stack_size = (stack_bytes() + page - 1) / page * page;
      char* base = map_or_die(f.stack_size + page);
      mprotect(base, page, PROT_NONE);  // an overflow faults instead of corrupting a neighbour
      f.stack = base + page;
    }
#if SIMT_ASAN
    ASAN_UNPOISON_MEMORY_REGION(f.stack, f.stack_size);  // frames abandoned by earlier blocks
#endif
    f.thread.thread_idx = make_uint3(i % k.block.x, i / k.block.x % k.block.y, i / (k.block.x * k.block.y));
    f.thread.block_idx = w.block_idx;
    f.thread.block_dim = k.block;
    f.thread.grid_dim = k.grid;
    f.thread.linear = i;
    f.state = State::kRunnable;
    f.result = 0;
    f.asan_fake_stack = nullptr;
    make_context(f.context, f.stack, f.stack_size, &fiber_main);
  }
  for (unsigned i = n; i < w.fibers.size(); ++i) w.fibers[i].state = State::kDone;
  w.warps.assign((n + 31) / 32, Warp{});
  for (unsigned i = 0; i < n; ++i) w.warps[i / 32].live |= 1u << (i % 32);
  w.live = int(n);
  w.at_barrier = 0;
  w.failed = false;
  w.running = nullptr;

  if (w.arena == nullptr) w.arena = map_or_die(kArenaBytes);
  w.variables.clear();
  w.static_bytes = 0;
  w.dynamic_bytes = k.dynamic_smem;
#if SIMT_ASAN
  ASAN_POISON_MEMORY_REGION(w.arena, kArenaBytes);
  ASAN_UNPOISON_MEMORY_REGION(w.arena, k.dynamic_smem);
#endif
  std::memset(w.arena, kPoison, k.dynamic_smem);
  w.arena_used = (k.dynamic_smem + 15) / 16 * 16 + kRedzone;

  const Order order = Order(settings().order.load());
  w.order.resize(n);
  for (unsigned i = 0; i < n; ++i) w.order[i] = order == Order::kReverse ? n - 1 - i : i;
  w.rng = settings().seed.load() * 0x9E3779B97F4A7C15ull + linear * 0xD1B54A32D192ED03ull + 1;
}

std::string deadlock_report(const Worker& w) {
  std::string r = "deadlock: no thread of the block can proceed;";
  if (w.at_barrier > 0) {
    r += " " + std::to_string(w.at_barrier) + " of " + std::to_string(w.live) + " live threads wait at " +
         where_text(w.barrier_site) + ";";
  }
  for (size_t i = 0; i < w.warps.size(); ++i) {
    for (const Pending& p : w.warps[i].pending) {
      r += " warp " + std::to_string(i) + ": lanes " + hex(p.arrived) + " wait at " + op_name(p.op) + " with mask " +
           hex(p.mask) + " at " + where_text(p.site) + " for lanes " + hex(p.mask & ~p.arrived) + ";";
    }
  }
  return r;
}

void fiber_main() {
  Worker& w = *t_worker;
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &w.scheduler_stack, &w.scheduler_stack_size);
#endif
  w.launch->kernel->run(w.launch->kernel->state);
  // The thread exits: it leaves its warp's live lanes and stops counting for barriers.
  Fiber& f = *w.running;
  const unsigned bit = 1u << (f.thread.linear % 32);
  Warp& warp = w.warps[f.thread.linear / 32];
  warp.live &= ~bit;
  --w.live;
  for (const Pending& p : warp.pending) {
    if (p.mask & bit) {
      record_failure(w, "exited while lanes " + hex(p.arrived) + " of its warp wait for it at " + op_name(p.op) +
                            " with mask " + hex(p.mask) + " at " + where_text(p.site));
      leave_for_good(w);
    }
  }
  if (w.at_barrier > 0 && w.at_barrier == w.live) release_barrier(w);
  leave_for_good(w);
}

}  // namespace

bool run_block(Worker& w, Launch& launch, uint64_t linear) {
  const KernelLaunch& k = *launch.kernel;
  w.launch = &launch;
  w.block_idx = make_uint3(unsigned(linear % k.grid.x), unsigned(linear / k.grid.x % k.grid.y),
                           unsigned(linear / (uint64_t(k.grid.x) * k.grid.y)));
  prepare(w, launch, linear);
  t_worker = &w;
  const bool shuffle = Order(settings().order.load()) == Order::kRandom;
  while (w.live > 0 && !w.failed && !launch.failed.load(std::memory_order_relaxed)) {
    if (shuffle) {
      for (size_t i = w.order.size(); i > 1; --i) {
        w.rng ^= w.rng << 13;
        w.rng ^= w.rng >> 7;
        w.rng ^= w.rng << 17;
        std::swap(w.order[i - 1], w.order[w.rng % i]);
      }
    }
    bool moved = false;
    for (unsigned i : w.order) {
      Fiber& f = w.fibers[i];
      if (f.state != State::kRunnable) continue;
      resume(w, f);
      moved = true;
      if (w.failed) break;
    }
    if (!moved && !w.failed && w.live > 0) record_failure(w, deadlock_report(w));
  }
  t_worker = nullptr;
  return !w.failed && !launch.failed.load();
}

}  // namespace simt
