"""`anogan-serve` and `python -m anogan_inspect.server` (each --workers worker too).

SIGHUP rereads the tokens once the server is up; until then, and in a server without
tokens, its default action would kill the process. So it is ignored here, before torch and
the server are imported (seconds), and the server installs its handler once serving.
"""

import signal
import sys


def main() -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from anogan_inspect.server.cli import main as serve

    return serve()


if __name__ == "__main__":
    sys.exit(main())
