"""`python -m refspec ...`: the `refspec` command, where its script is not on PATH."""
import sys

from refspec.cli import main

sys.exit(main())
