import sys

from vaultpolicy.cli import main

sys.exit(main())
