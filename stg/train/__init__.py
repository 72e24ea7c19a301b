"""Step 2, training: the one training loop (``loop``) with its hooks and task-weight schedules
(``hooks``, ``schedules``), the configuration (``config``), devices and device-resident data
(``device``), augmentation, the loss, the models and the CUDA-graph step (``stepgraph``)."""
