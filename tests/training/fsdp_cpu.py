"""Run the ``fluxsr`` command line under FSDP2 on CPU processes (gloo); used by tests/test_train_fsdp.py.

accelerate 1.16 picks FSDP only on an accelerator: on a machine without one, ``AcceleratorState`` makes the
processes a MULTI_CPU (DDP) run and drops the FSDP plugin that ``--use_fsdp`` / an FSDP config file asked for (in
``accelerate/state.py`` the FSDP choice sits inside the MULTI_GPU/XPU/... branch), silently. This launcher makes
that one choice itself, keeping the plugin accelerate built from the launch configuration, and then runs the
unchanged ``fluxsr`` CLI: accelerate prepares the transformer with its own FSDP2 code (torch ``fully_shard``) on the
gloo process group, as it does on GPUs with NCCL.

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 --mixed_precision no \
        tests/training/fsdp_cpu.py train --config ...
"""

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

from fluxsr.cli import main

accelerate_state_init = AcceleratorState.__init__


def fsdp_state_init(self, *args, fsdp_plugin=None, **kwargs):
    """``AcceleratorState.__init__``, then an FSDP run where accelerate made a MULTI_CPU one despite the plugin."""
    accelerate_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


if __name__ == "__main__":
    AcceleratorState.__init__ = fsdp_state_init
    sys.exit(main(sys.argv[1:]))
