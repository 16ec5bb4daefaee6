import sys

from bench.check.baselines.run import main

sys.exit(main())
