"""Files in and out: images (read/write with alpha, ICC, EXIF, 16-bit), typed YAML configs, the cache and atomic
writes, the guards that keep outputs off inputs, and Hugging Face repo ids as model names."""

from .cache import (
    DamagedFileError,
    MissingWeightsError,
    cache_dir,
    cached_file,
    read_safetensors,
    write_atomic,
)
from .config import ConfigError, from_dict, load_config, to_dict
from .guards import check_inputs_apart, real_path
from .hub import RepoRef, hub_model_path, parse_repo_ref
from .images import ImageError, find_images, read_image, resize, write_image

__all__ = [
    "ConfigError",
    "DamagedFileError",
    "ImageError",
    "MissingWeightsError",
    "RepoRef",
    "cache_dir",
    "cached_file",
    "check_inputs_apart",
    "find_images",
    "from_dict",
    "hub_model_path",
    "load_config",
    "parse_repo_ref",
    "read_image",
    "read_safetensors",
    "real_path",
    "resize",
    "to_dict",
    "write_atomic",
    "write_image",
]
