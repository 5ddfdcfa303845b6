import sys

from qatvm.hardware.cli import main

sys.exit(main())
