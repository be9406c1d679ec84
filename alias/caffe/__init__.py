"""`import caffe` for caffe-lite (the distribution caffe-lite-alias): pycaffe's module layout
over caffe_lite (caffe.io, caffe.proto.caffe_pb2, caffe.draw, caffe.coord_map, caffe.net_spec,
caffe.layers / caffe.params, caffe.Layer, caffe.classifier, caffe.detector, caffe.pycaffe).
See caffe_lite/alias.py and docs/pycaffe.md.  Uninstall: python -m pip uninstall caffe-lite-alias"""
import os as _os

from caffe_lite import alias as _alias

_alias.populate(__name__)
_alias.warn_if_shadowing(_os.path.dirname(_os.path.abspath(__file__)))
del _os, _alias
