import sys

from lvseg_search.cli import main

sys.exit(main())
