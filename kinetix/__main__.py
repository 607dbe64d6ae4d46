import sys

from kinetix.cli.main import main

sys.exit(main())
