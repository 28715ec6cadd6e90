"""Files in and out: images (read/write with alpha, ICC, EXIF, 16-bit), typed YAML configs, the cache and atomic writes."""
