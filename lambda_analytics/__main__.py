"""``python -m lambda_analytics``: the command line."""

from .cli import main

raise SystemExit(main())
