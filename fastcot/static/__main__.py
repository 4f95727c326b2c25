import sys

from fastcot.static.report import main

sys.exit(main())
