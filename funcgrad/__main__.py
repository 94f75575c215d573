"""``python -m funcgrad``: the command line of `funcgrad.inspect` (graph, summary, cost) and of `funcgrad.export`.

See ``python -m funcgrad --help`` and ``python -m funcgrad export --help``.
"""

import sys

if sys.argv[1:2] == ["export"]:
    from funcgrad.export import main as export_main

    raise SystemExit(export_main(sys.argv[2:]))

from funcgrad.inspect.cli import main

raise SystemExit(main())
