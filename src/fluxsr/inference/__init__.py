"""One-step super-resolution: the pipeline, tiling, colour fix, memory plan, fast paths and the batch runner behind `fluxsr upscale`."""
