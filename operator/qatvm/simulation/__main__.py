import sys

from qatvm.simulation.cli import main

sys.exit(main())
