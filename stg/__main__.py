"""``python -m stg ...`` runs the command line, as ``stg ...`` does; torchrun starts each rank of a
data-map run on several processes this way: ``torchrun --nproc-per-node N -m stg datamap ...``."""

import sys

from stg.cli import main

sys.exit(main())
