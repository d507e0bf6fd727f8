from __future__ import annotations

import gc
import sys

# Before the first heavy import: see `edgeruntime.serving.cli.main`, which turns the collector back on.
gc.disable()

from edgeruntime.serving.cli import main  # noqa: E402

sys.exit(main())
