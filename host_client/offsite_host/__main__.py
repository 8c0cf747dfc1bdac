"""`python -m offsite_host` runs the `offsite-host` command."""

import sys

from offsite_host.cli import main

sys.exit(main())
