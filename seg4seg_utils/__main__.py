# Pin the CPU kernels before anything imports torch (a no-op inside the project's .venv, which already does).
from seg4seg_utils.kernels import pin_process_env

pin_process_env()

from seg4seg_utils.cli import main  # noqa: E402

raise SystemExit(main())
