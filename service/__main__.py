"""`python -m service …`: see `service.cli`."""

from service.cli import main

raise SystemExit(main())
