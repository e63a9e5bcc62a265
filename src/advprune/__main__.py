"""`python -m advprune` (and `torchrun -m advprune`) runs the CLI."""

from advprune.cli import main

raise SystemExit(main())
