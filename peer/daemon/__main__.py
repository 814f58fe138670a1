"""`python -m edgeshard.peer.daemon`: the same as `edgeshard-peer`."""

import sys

from .main import main

sys.exit(main())
