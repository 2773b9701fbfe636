import sys

from snncc.cli import main

sys.exit(main())
