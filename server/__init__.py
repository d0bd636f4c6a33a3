"""anogan-inspect gRPC server: resident models, continuous batching, fast path."""
