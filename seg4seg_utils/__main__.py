# Pin the CPU numerics before numpy, OpenBLAS, numba or torch load (see seg4seg_utils.kernels). numpy is
# already loaded by the time this file runs (the package imports it), and it reads its SIMD setting only
# once, so a process without the pins restarts itself with them. Inside the project's .venv they are set at
# interpreter start-up and this is a no-op.
import os
import sys

from seg4seg_utils.kernels import KERNEL_ENV, missing_pins

if missing_pins() and os.environ.get("SEG4SEG_PINNED_RESTART") != "1":
    env = {**KERNEL_ENV, **os.environ, "SEG4SEG_PINNED_RESTART": "1"}
    os.execve(sys.executable, [sys.executable, "-m", "seg4seg_utils", *sys.argv[1:]], env)

from seg4seg_utils.cli import main  # noqa: E402

raise SystemExit(main())
