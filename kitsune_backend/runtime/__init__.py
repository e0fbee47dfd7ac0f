"""What runs at each call of a compiled graph: the schedule on its streams, the arena, CUDA
graph capture and replay. Built by the runtime stages of the pipeline
(:mod:`kitsune_backend.binding`)."""
