"""Train under a launcher and record, on every rank, a digest of its parameters at each checkpoint.

Used by tests/test_distributed.py: identical digests on all ranks prove the DDP ranks stayed in step.
Usage: accelerate launch ... tests/scripts/rank_digest.py CONFIG [dotted.key=value ...]
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from ganpaint import config as config_lib
from ganpaint.models.layers import plain_module
from ganpaint.training import checkpoint
from ganpaint.training.distributed import shutdown
from ganpaint.training.loop import train

real_save = checkpoint.save


def save_and_digest(state, run_dir, step, config, keep, extra=None):
    digests = {}
    for name, net in state.nets().items():
        module = plain_module(net)
        for kind, tensors in (
            ("parameters", module.named_parameters()),
            ("buffers", module.named_buffers()),
        ):
            digest = hashlib.sha256()
            for key, tensor in sorted(tensors):
                digest.update(key.encode() + tensor.detach().float().cpu().numpy().tobytes())
            digests[f"{name}_{kind}"] = digest.hexdigest()
    rank = state.accelerator.process_index
    with (Path(run_dir) / f"digest-rank{rank}.jsonl").open("a") as handle:
        handle.write(
            json.dumps({"step": step, "world": state.accelerator.num_processes, **digests}) + "\n"
        )
    return real_save(state, run_dir, step, config, keep, extra)


checkpoint.save = save_and_digest

if __name__ == "__main__":
    train(config_lib.load(sys.argv[1], sys.argv[2:]))
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
