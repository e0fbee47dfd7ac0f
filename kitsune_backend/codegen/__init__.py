"""Generated Triton kernels: op lowerings, region rules, source templates, launch
heuristics, autotuning and the on-disk kernel cache used by the fusion pass."""
