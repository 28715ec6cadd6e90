"""fluxsr for ComfyUI: link or copy this folder into ``ComfyUI/custom_nodes/`` (any name but ``fluxsr``).

It needs the ``fluxsr`` package installed in ComfyUI's Python (``pip install fluxsr`` or ``pip install -e``
from a checkout); the nodes live in :mod:`.nodes`.
"""

# ComfyUI imports a node folder as a module named after the folder: named "fluxsr", it would hide the package
if __name__ == "fluxsr":
    raise ImportError(
        "the fluxsr node folder is named 'fluxsr' in custom_nodes, which hides the fluxsr package: "
        "rename the link or copy (e.g. custom_nodes/fluxsr-nodes)"
    )

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
