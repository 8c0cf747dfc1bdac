"""`python -m chalicelib.admin ...`, the same as `offsite-admin ...`."""

from chalicelib.admin.cli import main

raise SystemExit(main())
