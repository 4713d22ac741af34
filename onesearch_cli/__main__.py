import sys

from onesearch_cli.main import main

sys.exit(main())
