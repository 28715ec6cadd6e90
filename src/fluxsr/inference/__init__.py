"""One-step super-resolution: the pipeline, tiling, colour fix, memory plan, fast paths, the batch runner behind
`fluxsr upscale` and its fidelity check (the output shrunk back against its input: ``lr_psnr``, ``fidelity_map``).

The names below load on first use, so that importing one light module of this folder (the memory plan's units,
the colour fix) does not load the model code (torch, diffusers) with it.
"""

from ..lazy import lazy_face

__getattr__, __all__ = lazy_face(
    __name__,
    {
        "COLOR_FIXES": "color",
        "color_fix": "color",
        "fidelity_map": "fidelity",
        "lr_psnr": "fidelity",
        "FastPath": "fastpath",
        "apply_fast_path": "fastpath",
        "ModelChoice": "loading",
        "load_pipeline": "loading",
        "MemoryPlan": "memory",
        "plan_for": "memory",
        "FluxSRPipeline": "pipeline",
        "NonFiniteOutputError": "pipeline",
        "UpscaleOptions": "pipeline",
        "BatchOptions": "upscale",
        "FileResult": "upscale",
        "make_backend": "upscale",
        "upscale_paths": "upscale",
    },
)
