"""``python -m funcgrad``: the command line of `funcgrad.inspect` (graph, summary, cost) and of `funcgrad.export`.

See ``python -m funcgrad --help`` and ``python -m funcgrad export --help``.
"""

import sys

if sys.argv[1:2] == ["export"]:
    from funcgrad.export import main as export_main

    raise SystemExit(export_main(sys.argv[2:]))

from funcgrad.inspect.cli import main

EXPORT_HELP = "save the model MODULE:NAME as StableHLO + safetensors, runnable without funcgrad"
raise SystemExit(main(elsewhere={"export": EXPORT_HELP}))
