"""`python -m edgeshard.peer.cli`: the same as `edgeshard`."""

import sys

from .main import main

sys.exit(main())
