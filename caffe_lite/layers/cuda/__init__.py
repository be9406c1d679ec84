"""GPU (PyCUDA) implementations of the layer families; imported only in GPU mode."""
