"""`python -m mlxserve.gateway`"""

import sys

from .main import main

sys.exit(main())
