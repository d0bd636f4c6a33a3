import sys

from anogan_inspect.server.cli import main

sys.exit(main())
