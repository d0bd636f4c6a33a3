import sys

from anogan_inspect.trainer.cli import main

sys.exit(main())
