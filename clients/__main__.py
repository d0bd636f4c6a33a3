"""`python -m anogan_inspect.clients`: the streaming client, `anogan-client`."""

import sys

from anogan_inspect.clients.stream_client import main

sys.exit(main())
