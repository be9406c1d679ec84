"""The committed *_pb2 modules match proto/*.proto, and the schema keeps Caffe's numbers."""
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from caffe_lite.proto import caffe_pb2

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _compiled(tmp_path, name):
    protoc = pytest.importorskip("grpc_tools.protoc",
                                 reason="grpcio-tools (protoc) is needed to compile the .proto")
    out = tmp_path / f"{name}.desc"
    rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--descriptor_set_out={out}",
                      str(ROOT / "proto" / f"{name}.proto")])
    assert rc == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return fds.file[-1]


def _normalise(fdp):
    """Remove what differs between protoc versions but not in meaning: json_name (derived
    from the field name) and the spelling of float defaults ("1e-08" vs "9.99999994e-09")."""
    float_types = (descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
                   descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE)

    def walk(msg):
        for f in list(msg.field) + list(getattr(msg, "extension", [])):
            f.ClearField("json_name")
            if f.type in float_types and f.HasField("default_value"):
                f.default_value = repr(float(np.float32(float(f.default_value))))
        for m in msg.nested_type:
            walk(m)
    for m in fdp.message_type:
        walk(m)
    for f in fdp.extension:
        f.ClearField("json_name")


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "proto").glob("*.proto")))
def test_generated_module_matches_proto(tmp_path, name):
    import importlib
    mod = importlib.import_module(f"caffe_lite.proto.{name}_pb2")
    committed = descriptor_pb2.FileDescriptorProto.FromString(mod.DESCRIPTOR.serialized_pb)
    fresh = _compiled(tmp_path, name)
    _normalise(committed)
    _normalise(fresh)
    assert committed == fresh, (f"caffe_lite/proto/{name}_pb2.py is stale: "
                                "run python tools/gen_proto.py")


@pytest.mark.parametrize("message,field,number,default", [
    ("BlobProto", "shape", 7, None), ("BlobProto", "num", 1, 0),
    ("Datum", "encoded", 7, False), ("FillerParameter", "type", 1, "constant"),
    ("FillerParameter", "sparse", 7, -1), ("NetParameter", "layer", 100, None),
    ("NetParameter", "layers", 2, None), ("NetParameter", "input_dim", 4, None),
    ("SolverParameter", "type", 40, "SGD"), ("SolverParameter", "random_seed", 20, -1),
    ("SolverParameter", "clip_gradients", 35, -1.0), ("SolverParameter", "delta", 31, 1e-8),
    ("SolverParameter", "momentum2", 39, 0.999), ("SolverParameter", "rms_decay", 38, 0.99),
    ("SolverParameter", "iter_size", 36, 1), ("SolverParameter", "snapshot_format", 37, 1),
    ("SolverState", "current_step", 4, 0), ("LayerParameter", "convolution_param", 106, None),
    ("LayerParameter", "batch_norm_param", 139, None), ("LayerParameter", "permute_param", 202,
                                                        None),
    ("ConvolutionParameter", "group", 5, 1), ("ConvolutionParameter", "dilation", 18, None),
    ("PoolingParameter", "round_mode", 13, 0), ("BatchNormParameter", "eps", 3, 1e-5),
    ("LossParameter", "normalization", 3, 1), ("ParamSpec", "lr_mult", 3, 1.0),
    ("V1LayerParameter", "blobs_lr", 7, None), ("LRNParameter", "beta", 3, 0.75),
])
def test_caffe_field_numbers_and_defaults(message, field, number, default):
    f = getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[field]
    assert f.number == number
    if default is not None:
        assert f.default_value == pytest.approx(default)


def test_generated_code_imports_in_a_fresh_interpreter():
    code = "import caffe_lite.proto.caffe_pb2 as p; print(p.NetParameter().ByteSize())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"
