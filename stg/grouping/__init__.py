"""Step 4, grouping: task features from data maps (``features``), soft clustering (``fuzzy``),
cluster quality and k scans (``quality``), comparison with reference groupings (``reference``),
2-D task maps (``projection``) and the ``stg group`` entry point that writes G.json (``make``)."""
