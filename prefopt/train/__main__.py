"""`python -m prefopt.train ARGS` is `prefopt train ARGS` (torchrun and accelerate launch need a module to run).

It runs the `prefopt` program (`prefopt/__main__.py`) with `train` in front of the arguments, so the training
package itself never imports the command line.
"""

from __future__ import annotations

import runpy
import sys

if __name__ == "__main__":
    sys.argv[1:1] = ["train"]
    runpy.run_module("prefopt", run_name="__main__", alter_sys=True)
