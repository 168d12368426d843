"""`python -m wsi_segment ...` is the `wsi-segment` command."""

import sys

from wsi_segment.flows.cli import main

sys.exit(main())
