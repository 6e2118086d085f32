"""Research workflow: stable run folders and W&B run ids across SLURM requeues, the resolved config on W&B, a per-run
record of attempts, offline sweep expansion and the paper's experiment manifest."""
