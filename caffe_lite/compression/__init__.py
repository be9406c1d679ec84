"""Model compression beyond pruning masks: weight sharing (trained quantisation), compressed
model files (Deep Compression's relative indices, codebooks and Huffman coding), and the sparse
weight formats that let pruned InnerProduct and Convolution layers compute only their nonzero
weights at inference (`sparse`)."""
