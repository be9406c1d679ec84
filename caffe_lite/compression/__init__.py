"""Compression: Deep Compression's weight sharing (trained quantisation) and compressed model
files.  `quantize` clusters each layer's live weights into 2^bits shared values (k-means,
linear initialisation) and `WeightSharing` fine-tunes them with any solver (each shared value
moves by its weights' summed gradient, masks holding); `format` writes and reads caffe-lite's
compressed file (relative indices with padding zeros, codebook indices, canonical Huffman
coding, dense blobs as float32, versioned and checksummed), which `Net(..., weights=...)`
loads like a caffemodel; `deepcompression` reads the files Han et al. published with the
paper (per layer: nz_num, codebook, bias, spm_stream, ind_stream).  See docs/compression.md.
`sparse` holds the CSR weight format that pruned InnerProduct and Convolution layers compute
their forward from, and sparse inference's settings, report and timing (docs/sparse.md)."""
from . import deepcompression, format, huffman, positions, quantize, sharing
from .format import compress, decompress, is_compressed
from .quantize import Codebook, QuantizationError, kmeans_1d, parse_bits, quantize_net
from .sharing import WeightSharing

__all__ = ["Codebook", "QuantizationError", "WeightSharing", "compress", "decompress",
           "deepcompression", "format", "huffman", "is_compressed", "kmeans_1d", "parse_bits",
           "positions", "quantize", "quantize_net", "sharing"]
