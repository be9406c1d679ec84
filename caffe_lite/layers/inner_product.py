"""InnerProduct: a fully connected layer, Caffe's InnerProductLayer."""
import numpy as np

from ..errors import CaffeLiteError
from .base import Layer
from . import gemm_pool, sparse
from .parallel import kernel_tail, matmul, prepare_bias, prepare_few_rows, prepare_matmul
from .program import in_order, ready_while
from .registry import register


@register("InnerProduct")
class InnerProductLayer(Layer):
    """top = bottom(M, K) x W^T + b, with K = count(axis:) and M = count(:axis).

    W is stored (num_output, K), or (K, num_output) with `transpose: true`; the top keeps the
    bottom's axes before `axis` and replaces the rest with num_output.  A pruned W may run
    forward from its CSR copy (layers/sparse.py: `self.sparse`)."""
    exact_num_bottom = 1
    exact_num_top = 1
    prunable = True

    def _canonical_axis(self, blob):
        try:
            return blob.canonical_axis_index(self.layer_param.inner_product_param.axis)
        except CaffeLiteError as exc:
            raise self.error(f"bad inner_product_param axis: {exc}") from None

    def layer_setup(self, bottom, top):
        p = self.layer_param.inner_product_param
        self.num_output = int(p.num_output)
        if self.num_output < 1:
            raise self.error(f"num_output must be >= 1, got {self.num_output}")
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        self.axis = self._canonical_axis(bottom[0])
        self.K = bottom[0].count_range(self.axis)
        n, k = self.num_output, self.K
        shapes = [(k, n) if self.transpose else (n, k)]
        if self.bias_term:
            shapes.append((n,))
        if self.blobs:
            if len(self.blobs) != len(shapes):
                raise self.error(f"has {len(self.blobs)} blob(s) but needs {len(shapes)} "
                                 f"(bias_term: {str(self.bias_term).lower()})")
            self.check_loaded_blobs(shapes)
        else:
            self.blobs = [self.param_blob(shapes[0], p.weight_filler)]
            if self.bias_term:
                self.blobs.append(self.param_blob(shapes[1], p.bias_filler))
        self.sparse = sparse.SparsePath(self, "ip", transpose=self.transpose)

    def reshape(self, bottom, top):
        axis = self._canonical_axis(bottom[0])
        new_k = bottom[0].count_range(axis)
        if new_k != self.K:
            raise self.error(
                f"input size incompatible with inner product parameters: bottom shape "
                f"{bottom[0].shape} gives K = {new_k} (count from axis {axis}), but the "
                f"layer was set up with K = {self.K}")
        self.axis = axis
        self.M = bottom[0].count_range(0, axis)
        top[0].reshape(bottom[0].shape[:axis] + (self.num_output,))

    def _weight_as_kn(self, w):
        """The weight as a (K, N) matrix: x @ it is the forward product."""
        return w if self.transpose else w.T

    def forward_cpu(self, bottom, top, post=None):
        """`post`: a fusion.Epilogue that adds the bias (and applies what follows the layer
        in a fused group) in one pass after the product."""
        self.prepare_cpu(bottom, top, post)()

    def prepare_cpu(self, bottom, top, post=None):
        x = bottom[0].cpu_data.reshape(self.M, self.K)
        y = top[0].data.reshape(self.M, self.num_output)
        bias = self._bias() if post is None else None
        w = self.blobs[0].cpu_data
        # a batch of a few: the compiled kernel, which applies the bias and the fused tail too
        fused = None if self.transpose else prepare_few_rows(
            x, w, y, kernel_tail(post, bias, self.num_output))
        product = fused or prepare_matmul(x, self._weight_as_kn(w), y)
        tail = None if post is None else post.prepare(y.reshape(self.M, self.num_output, 1))
        add_bias = None if fused is not None or bias is None else \
            prepare_bias(y.reshape(self.M, self.num_output, 1), bias)
        dense = product if fused is not None else in_order(product, add_bias, tail)
        path = self.sparse
        choose = path.chooser(self.M)

        def run():
            csr = choose()
            if csr is None:
                dense()
                return
            sparse.inner_product(path, csr, x, bias, y)
            if tail is not None:
                tail()
        # what a native program (layers/program.py) runs instead, while the path is dense
        inner = dense.ready if gemm_pool.phases_of(dense) is not None else None
        return gemm_pool.attach(run, gemm_pool.phases_of(dense), ready_while(
            lambda: choose() is None and (inner is None or inner()), choose.watch, inner))

    def forward_gpu(self, bottom, top):
        csr = self.sparse.choose(self.M, gpu=True)
        if csr is None:
            super().forward_gpu(bottom, top)
        else:
            from .cuda import sparse as cuda_sparse
            cuda_sparse.inner_product(self, csr, bottom, top)

    def _bias(self):
        return self.blobs[1].cpu_data if self.bias_term else None

    def backward_cpu(self, top, propagate_down, bottom):
        dy = top[0].cpu_diff.reshape(self.M, self.num_output)
        x = bottom[0].cpu_data.reshape(self.M, self.K)
        if self.param_propagate_down[0]:
            w_diff = self.blobs[0].diff
            grad = self._grad_buffer(w_diff.shape)
            if self.transpose:
                matmul(x.T, dy, grad)
            else:
                matmul(dy.T, x, grad)
            np.add(w_diff, grad, out=w_diff)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0, dtype=np.float32)
        if propagate_down[0]:
            dx = bottom[0].diff.reshape(self.M, self.K)
            matmul(dy, self._weight_as_kn(self.blobs[0].cpu_data).T, dx)

    def _grad_buffer(self, shape):
        buf = getattr(self, "_grad", None)
        if buf is None or buf.shape != shape:
            buf = self._grad = np.empty(shape, np.float32)
        return buf
