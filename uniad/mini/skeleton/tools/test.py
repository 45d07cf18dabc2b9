"""Entry point of the mini UniAD root, with UniAD's tools/test.py command line (see the plugin's testing module)."""

import os
import sys

# UniAD is run with the root on PYTHONPATH; keep `python tools/test.py` working without it too.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from projects.mmdet3d_plugin.uniad_mini.testing import main  # noqa: E402

if __name__ == "__main__":
    main()
