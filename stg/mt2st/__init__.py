"""MT2ST (Liu & Jiang 2024): schedules of the auxiliary tasks' loss weight (``schedules``), one
model trained under a schedule with the auxiliary heads dropped once their weight is 0 for good
(``train``), a single target task against stl and mtl (``target``), and the weight-curve figure
(``plots``). Grouped training takes the same schedules (``stg.specialists.grouped``)."""
