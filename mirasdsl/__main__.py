"""``python -m mirasdsl`` runs the ``miras`` command line."""
import sys

from mirasdsl.cli import main

sys.exit(main())
