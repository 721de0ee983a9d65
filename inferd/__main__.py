"""`python -m inferd ...` is the same as the `inferd` console script."""

from inferd.server.cli import main

raise SystemExit(main())
