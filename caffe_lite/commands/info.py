"""`caffe-lite layers` and `caffe-lite device_query`."""
from .registry import command


@command("layers", "list the supported layer types")
def layers_cmd(args):
    from ..layers import layer_type_list
    for t in layer_type_list():
        print(t)
