"""The run directory, the hand-off between steps (``rundir``), background jobs for the dashboard
(``jobs``) and exports (``export``)."""
