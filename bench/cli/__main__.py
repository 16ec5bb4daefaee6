"""``python -m bench.cli``: the ``metabench`` command."""

from bench.cli.main import main

raise SystemExit(main())
