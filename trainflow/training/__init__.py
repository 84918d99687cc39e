"""Models and the training loop: base models, heads, freezing, the loop, the GPU fast path, checkpoints, packed and data-parallel workers."""
