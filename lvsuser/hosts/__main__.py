"""`python3 -m lvsuser.hosts MODE ...` is `lvsuser realserver MODE ...`."""
import sys

from lvsuser.hosts.cli import main

sys.exit(main())
