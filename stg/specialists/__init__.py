"""Step 5, grouped training: k specialists as one fused ensemble (``ensembles``), a grouping's
specialists against baselines (``grouped``), and test-split evaluation (``evaluate``)."""
