"""``python -m flows``: the main job (see flows/cli.py)."""

from flows.cli import main

raise SystemExit(main())
