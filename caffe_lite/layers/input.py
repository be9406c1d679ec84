"""Input: the net's entry point.  Its tops are shaped from input_param and filled by the user
(net.blobs['data'].data[...] = ...)."""
from .base import Layer
from .registry import register
from . import program


@register("Input")
class InputLayer(Layer):
    exact_num_bottom = 0
    min_top = 1

    def layer_setup(self, bottom, top):
        shapes = self.layer_param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise self.error(f"must specify 'shape' once, once per top blob, or not at all: "
                             f"{len(top)} tops vs. {len(shapes)} shapes")
        for i, t in enumerate(top):
            if not shapes:
                break  # no shape: the user reshapes the tops
            dims = list(shapes[0 if len(shapes) == 1 else i].dim)
            if any(d < 0 for d in dims):
                raise self.error(f"top[{i}] shape {dims} has a negative dimension")
            t.reshape(dims)

    def reshape(self, bottom, top):
        pass  # shaped once at setup, or by the user

    prepare_cpu = program.prepare_nothing

    def forward_cpu(self, bottom, top):
        pass

    def backward_cpu(self, top, propagate_down, bottom):
        pass
