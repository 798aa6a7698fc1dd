"""`python -m flaxzoo.train` is the `flaxzoo` command."""

import sys

from flaxzoo.train.cli import main

sys.exit(main())
