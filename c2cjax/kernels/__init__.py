"""Hand-written kernels for where XLA's own code is the bottleneck (see each module)."""
