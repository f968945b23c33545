"""``python -m mosixd`` is the ``mosixd`` command."""

import sys

from mosixd.daemon.main import main

sys.exit(main())
