"""``python -m funcgrad``: the command line of `funcgrad.inspect` (graph, summary, cost).

See ``python -m funcgrad --help``.
"""

from funcgrad.inspect.cli import main

raise SystemExit(main())
