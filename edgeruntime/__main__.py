from __future__ import annotations

import sys

from edgeruntime.cli import main

sys.exit(main())
