"""`python -m jkd.convert IN.pth.tar OUT_DIR`: a lab PyTorch checkpoint as jkd variables."""

import sys

from jkd.convert import main

sys.exit(main())
