"""python -m mpt_lite: the mpt-lite command."""
import sys

from .cli import main

sys.exit(main())
