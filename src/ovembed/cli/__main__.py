import sys

from ovembed.cli import main

sys.exit(main())
