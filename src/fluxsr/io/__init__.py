"""Files in and out: images (read/write with alpha, ICC, EXIF, 16-bit), typed YAML configs, the cache and atomic
writes, the guards that keep outputs off inputs, and Hugging Face repo ids as model names."""

from ..lazy import lazy_face

__getattr__, __all__ = lazy_face(
    __name__,
    {
        "DamagedFileError": "cache",
        "MissingWeightsError": "cache",
        "cache_dir": "cache",
        "cached_file": "cache",
        "read_safetensors": "cache",
        "write_atomic": "cache",
        "ConfigError": "config",
        "from_dict": "config",
        "load_config": "config",
        "to_dict": "config",
        "check_inputs_apart": "guards",
        "real_path": "guards",
        "RepoRef": "hub",
        "hub_model_path": "hub",
        "parse_repo_ref": "hub",
        "ImageError": "images",
        "find_images": "images",
        "read_image": "images",
        "resize": "images",
        "write_image": "images",
    },
)
