"""Step 1 of the pipeline, the data: task sets (``taskset``), the task spec language (``taskspec``),
the named datasets (``catalog``, ``datasets``) and their sources (``cifar``, ``fashion``,
``folder``, ``synthetic``)."""
