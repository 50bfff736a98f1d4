import sys

from miga.cli import main

sys.exit(main())
