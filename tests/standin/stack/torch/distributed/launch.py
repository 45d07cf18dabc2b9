"""Stand-in ``python -m torch.distributed.launch``: as torchrun, but the rank's --local-rank argument unless
--use_env (torch 2.x spells it with a hyphen, which UniAD v2.0's train.py does not accept)."""

import sys

from .run import launch, parse

if __name__ == "__main__":
    launch(parse(sys.argv[1:], use_env_default=False))
