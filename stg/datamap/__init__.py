"""Step 3, the data-map run: one multi-task model on all tasks through the training loop, with the
data-map recorder (``recorder``) as a hook; ``run`` owns the run directory's life cycle."""
