"""One honest comparison of grouping methods on one run (``stg compare RUN --k K``): plan (the
groupings), run (train each under one budget, resumable), report (statistics, figures)."""
