"""The command line: argv and the environment in, a `Config` (or a client call) out.

`offloadd.cli:main` is the console script, so `main` is re-exported here. It shadows the
submodule of the same name as an attribute: reach the module itself with
`importlib.import_module("offloadd.cli.main")`.
"""

from offloadd.cli.main import main

__all__ = ["main"]
