"""``python -m mosixd`` is the ``mosixd`` command."""

import sys

from mosixd.main import main

sys.exit(main())
