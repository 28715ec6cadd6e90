"""The FluxSR model: FLUX transformer + VAE + cached text conditioning, presets, loading (model folders, diffusers, BFL single files), LoRA, the rectified-flow maths and attention processors."""
