import sys

from icpo_eval.cli import main

sys.exit(main())
