// A CPU stand-in for the CUDA execution model, enough to run caffe-lite's kernels in tests on
// machines without a GPU: the kernel body runs once per (block, thread).
//
// One OS thread plays every CUDA thread.  Blocks run one after another (so __shared__ arrays
// can be plain statics).  Kernels without __syncthreads run their threads one after another;
// kernels with it run each block's threads as coroutines, each up to its next __syncthreads,
// round-robin, so every thread of the block reaches a barrier before any passes it.  A
// block where some threads finish while others wait at a barrier is reported (divergent
// barrier: undefined behaviour on a GPU).
#pragma once
#include <math.h>
#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <ucontext.h>
#include <functional>
#include <mutex>

struct dim3 { unsigned x = 1, y = 1, z = 1; };

static dim3 threadIdx, blockIdx, blockDim, gridDim;
static int emu_sync_in_serial = 0;      // __syncthreads called by a kernel run serially
static int emu_sync_divergent = 0;      // some threads passed a barrier others never reached
static int emu_coop = 0;                // inside a cooperative (coroutine) block
static unsigned emu_cur = 0;            // the running coroutine
static char* emu_stacks = nullptr;
static unsigned char* emu_finished = nullptr;
static unsigned emu_cap = 0;
static const size_t EMU_STACK = 256 * 1024;
static std::function<void()>* emu_body = nullptr;
static std::mutex emu_atomic_mutex;

#if defined(__x86_64__) && !defined(EMU_UCONTEXT)
// Coroutine switch without ucontext's signal-mask system calls: push the callee-saved
// registers, store the stack pointer in *from, load `to`, pop, return into the other stack.
extern "C" void emu_switch(void** from, void* to);
asm(".text\n.globl emu_switch\n.type emu_switch,@function\nemu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n  ret\n");
static void* emu_sched_sp = nullptr;
static void** emu_sp = nullptr;

static void emu_yield() { emu_switch(&emu_sp[emu_cur], emu_sched_sp); }
static void emu_resume(unsigned t) { emu_switch(&emu_sched_sp, emu_sp[t]); }

static void emu_entry() {
  (*emu_body)();
  emu_finished[emu_cur] = 1;
  emu_yield();  // never resumed
  abort();
}

static void emu_make(unsigned t) {
  // A fresh stack whose first `ret` enters emu_entry with a function entry's alignment
  // (rsp % 16 == 8 after the return address is popped).
  char* top = emu_stacks + (size_t)(t + 1) * EMU_STACK;
  void** sp = (void**)(((uintptr_t)top & ~(uintptr_t)15) - 8);
  *--sp = (void*)&emu_entry;
  for (int r = 0; r < 6; ++r) *--sp = nullptr;
  emu_sp[t] = (void*)sp;
}

static void emu_alloc_contexts(unsigned n) {
  free(emu_sp);
  emu_sp = (void**)calloc(n, sizeof(void*));
}
#else
// Portable (and AddressSanitizer-friendly) coroutines: ucontext.
static ucontext_t emu_sched;
static ucontext_t* emu_ctx = nullptr;

static void emu_yield() { swapcontext(&emu_ctx[emu_cur], &emu_sched); }
static void emu_resume(unsigned t) { swapcontext(&emu_sched, &emu_ctx[t]); }

static void emu_entry() {
  (*emu_body)();
  emu_finished[emu_cur] = 1;  // returning resumes emu_sched (uc_link)
}

static void emu_make(unsigned t) {
  getcontext(&emu_ctx[t]);
  emu_ctx[t].uc_stack.ss_sp = emu_stacks + (size_t)t * EMU_STACK;
  emu_ctx[t].uc_stack.ss_size = EMU_STACK;
  emu_ctx[t].uc_link = &emu_sched;
  makecontext(&emu_ctx[t], emu_entry, 0);
}

static void emu_alloc_contexts(unsigned n) {
  free(emu_ctx);
  emu_ctx = (ucontext_t*)calloc(n, sizeof(ucontext_t));
}
#endif

static inline void __syncthreads() {
  if (!emu_coop) { emu_sync_in_serial = 1; return; }
  emu_yield();
}

static inline float atomicAdd(float* p, float v) {
  std::lock_guard<std::mutex> guard(emu_atomic_mutex);
  float old = *p;
  *p = old + v;
  return old;
}

// Vector types and intrinsics the kernels use (a float4 access needs 16-byte alignment on a
// GPU: emu_check_align4 reports a misaligned one, which the hardware would fault on).
struct alignas(16) float4 { float x, y, z, w; };
static inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
static inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
template <class T> static inline T __ldg(const T* p) { return *p; }
static int emu_misaligned = 0;
static inline void emu_check_align4(const void* p) {
  if ((uintptr_t)p % 16) emu_misaligned = 1;
}
#define CL_CHECK_ALIGN(p) emu_check_align4(p)

#define __global__
#define __device__ static inline
#define __host__
#define __forceinline__
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

static void emu_set_thread(unsigned t) {
  threadIdx.x = t % blockDim.x;
  threadIdx.y = (t / blockDim.x) % blockDim.y;
  threadIdx.z = t / (blockDim.x * blockDim.y);
}

template <class F>
static void emu_run(dim3 g, dim3 b, int cooperative, F&& body) {
  gridDim = g;
  blockDim = b;
  const unsigned nt = b.x * b.y * b.z, nb = g.x * g.y * g.z;
  std::function<void()> fn(body);
  emu_body = &fn;
  if (cooperative && nt > emu_cap) {
    free(emu_stacks);
    free(emu_finished);
    emu_alloc_contexts(nt);
    emu_stacks = (char*)malloc(nt * EMU_STACK);
    emu_finished = (unsigned char*)calloc(nt, 1);
    emu_cap = nt;
  }
  for (unsigned k = 0; k < nb; ++k) {
    blockIdx.x = k % g.x;
    blockIdx.y = (k / g.x) % g.y;
    blockIdx.z = k / (g.x * g.y);
    if (!cooperative) {
      for (unsigned t = 0; t < nt; ++t) { emu_set_thread(t); fn(); }
      continue;
    }
    for (unsigned t = 0; t < nt; ++t) { emu_make(t); emu_finished[t] = 0; }
    emu_coop = 1;
    unsigned left = nt;
    while (left) {
      unsigned waiting = 0, ended = 0;
      for (unsigned t = 0; t < nt; ++t) {
        if (emu_finished[t]) continue;
        emu_cur = t;
        emu_set_thread(t);
        emu_resume(t);
        if (emu_finished[t]) { --left; ++ended; } else { ++waiting; }
      }
      if (waiting && ended) emu_sync_divergent = 1;
    }
    emu_coop = 0;
  }
  emu_body = nullptr;
}

extern "C" int emu_take_sync_error() {
  int e = emu_sync_in_serial | (emu_sync_divergent << 1) | (emu_misaligned << 2);
  emu_sync_in_serial = emu_sync_divergent = emu_misaligned = 0;
  return e;
}
