import sys

from bench.baselines.run import main

sys.exit(main())
