"""``python -m framefleet.workers.cli``: the ``framefleet`` command."""

import sys

from framefleet.workers.cli import main

sys.exit(main())
