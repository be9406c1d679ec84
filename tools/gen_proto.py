"""Regenerate caffe_lite/proto/*_pb2.py from proto/*.proto.

    pip install "grpcio-tools==1.62.3"   # bundles protoc 25.1
    python tools/gen_proto.py

The committed modules are generated with protoc 25.x on purpose: that gencode imports under every
protobuf runtime from 4.21 to the newest, whereas newer protoc output demands an equally new
runtime.  tests/test_proto.py checks that the committed modules match the .proto sources.
"""
import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    out = ROOT / "caffe_lite" / "proto"
    for src in sorted((ROOT / "proto").glob("*.proto")):
        rc = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", str(src)])
        if rc != 0:
            sys.exit(f"protoc failed on {src}")
        # protoc writes `import caffe_pb2`; inside the package it must be relative.
        gen = out / (src.stem + "_pb2.py")
        text = gen.read_text().replace("\nimport caffe_pb2 as", "\nfrom . import caffe_pb2 as")
        gen.write_text(text)
        print("wrote", gen.relative_to(ROOT))


if __name__ == "__main__":
    main()
