"""Kernels as native tasks: what lets the spinning workers of layers/gemm_pool.py run a block of
a compiled kernel without the interpreter.  Importing this module needs numba.

A family makes a kernel runnable there with a *task*: a plain function of the family's file,
marked with @task, taking (args, r0, r1, slot) as integers: `args` the address of an int64
array that layers/gemm_pool.py's `pack` filled from the kernel's arguments (an array as its
address and its shape, C order; an integer as itself), rows [r0, r1) and the scratch slot.  It
reads the arguments back in the same order with the readers below and calls the kernel:

    @task
    def relu_forward_task(args, r0, r1, slot):
        p = arguments(args)
        x, i = f32_1(p, 0)
        y, i = f32_1(p, i)
        relu_forward(readonly(x), y, r0, r1)   # (x is a blob's read-only cpu_data)

gemm_pool compiles a task into a C callback (numba.cfunc, on first use, cached like the
kernels); a worker calls it through its address (`call_task`).  Tasks are compiled lazily
rather than at import (as @cfunc would) so that layers.jit can drop their cached code first
when this file or _planes.py changed (their code is inlined into every task)."""
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic

# (args, r0, r1, slot) -> nothing
TASK_SIGNATURE = types.void(types.int64, types.int64, types.int64, types.int64)
# Upper bound of a task's packed arguments (int64 words)
MAX_WORDS = 64


def task(fn):
    """Mark `fn` as a native task (see the module docstring); it stays a Python function."""
    fn.native_task = True
    return fn


def _pointer_intrinsic(dtype):
    ptr = types.CPointer(dtype)

    @intrinsic
    def at(typingctx, address):
        def codegen(context, builder, signature, args):
            return builder.inttoptr(args[0], context.get_value_type(ptr))
        return ptr(types.int64), codegen
    return at


_f32_at = _pointer_intrinsic(types.float32)
_i64_at = _pointer_intrinsic(types.int64)
_i32_at = _pointer_intrinsic(types.int32)
_i16_at = _pointer_intrinsic(types.int16)


@intrinsic
def call_task(typingctx, fn, args, r0, r1, slot):
    """Call the task whose C callback is at address `fn`."""
    signature = types.void(types.int64, types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, sig, llargs):
        i64 = ir.IntType(64)
        callee = builder.inttoptr(llargs[0], ir.FunctionType(ir.VoidType(), [i64] * 4)
                                  .as_pointer())
        builder.call(callee, llargs[1:])
        return context.get_dummy_value()
    return signature, codegen


@intrinsic
def readonly(typingctx, array):
    """`array` typed as read-only: a task hands a kernel the same argument types as its
    Python callers (who pass blobs' read-only cpu_data), so that the kernel compiled for them
    serves the task too instead of being compiled again."""
    result = array.copy(readonly=True)

    def codegen(context, builder, signature, args):
        return args[0]      # (the same data model: only the type differs)
    return result(array), codegen


@njit(inline="always")
def arguments(address):
    """The packed arguments at `address`."""
    return carray(_i64_at(address), (MAX_WORDS,))


# Readers: (the array, the index of the next argument)
@njit(inline="always")
def f32_1(p, i):
    return carray(_f32_at(p[i]), (p[i + 1],)), i + 2


@njit(inline="always")
def f32_2(p, i):
    return carray(_f32_at(p[i]), (p[i + 1], p[i + 2])), i + 3


@njit(inline="always")
def f32_3(p, i):
    return carray(_f32_at(p[i]), (p[i + 1], p[i + 2], p[i + 3])), i + 4


@njit(inline="always")
def f32_4(p, i):
    return carray(_f32_at(p[i]), (p[i + 1], p[i + 2], p[i + 3], p[i + 4])), i + 5


@njit(inline="always")
def i64_1(p, i):
    return carray(_i64_at(p[i]), (p[i + 1],)), i + 2


@njit(inline="always")
def i32_3(p, i):
    return carray(_i32_at(p[i]), (p[i + 1], p[i + 2], p[i + 3])), i + 4


@njit(inline="always")
def i16_3(p, i):
    return carray(_i16_at(p[i]), (p[i + 1], p[i + 2], p[i + 3])), i + 4
