import sys

from opsdash.cli import main

sys.exit(main())
