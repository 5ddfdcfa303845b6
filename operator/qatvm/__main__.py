import sys

from qatvm.cli import main

sys.exit(main())
