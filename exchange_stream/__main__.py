import sys

from exchange_stream.cli import main

sys.exit(main())
