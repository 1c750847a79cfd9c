"""``python -m pipelines.study``: see :mod:`pipelines.study`."""
import sys

from pipelines.study import main

sys.exit(main())
