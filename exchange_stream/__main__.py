import sys

from exchange_stream.cli.main import main

sys.exit(main())
