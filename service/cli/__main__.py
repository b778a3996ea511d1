"""`python -m service.cli` (the benchmarks start the server this way)."""

from service.cli import main

raise SystemExit(main())
