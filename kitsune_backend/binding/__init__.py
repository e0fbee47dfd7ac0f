"""The runtime stages of the pipeline: they bind the planned graph to what runs per call
(:mod:`kitsune_backend.runtime`): outputs into the arena, code over the planned streams, CUDA
graph capture."""
