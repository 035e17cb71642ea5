"""`python3 -m lvsuser ...` is the `lvsuser` command."""
import sys

from lvsuser.cli import main

sys.exit(main())
