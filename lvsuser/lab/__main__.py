"""`python3 -m lvsuser.lab ...` is `lvsuser lab ...`."""
import sys

from lvsuser.lab.cli import main

sys.exit(main())
