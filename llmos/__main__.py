import sys

from llmos.shell.cli import main

sys.exit(main())
