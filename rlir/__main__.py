import sys

from rlir.cli import main

sys.exit(main())
