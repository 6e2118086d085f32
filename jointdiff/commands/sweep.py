"""``jointdiff sweep``: a W&B sweep file without a W&B server — expand it, run it here, or submit it to SLURM.

    jointdiff sweep expand experiments/sweeps/noisy_timesteps.yaml            # print every run's command line
    jointdiff sweep run    experiments/sweeps/noisy_timesteps.yaml --count 2  # run them here, one after another
    jointdiff sweep slurm  experiments/sweeps/noisy_timesteps.yaml            # write an array job, print `sbatch`
    jointdiff sweep alpha  --checkpoint joint_noisy.ckpt --alpha 200 ...      # one α of the α sweep, logged to W&B

The same file works with the W&B server: ``wandb sweep FILE`` then ``wandb agent <sweep id>``. Offline, ``grid``
runs every combination and ``random`` draws ``--count`` runs with ``--seed`` (:mod:`jointdiff.workflow.sweeps`).
Each run gets its own folder ``<out>/run_<index>`` (``$JOINTDIFF_RUN_DIR``); ``<out>/sweep.json`` pairs runs,
parameters and folders, and ``jointdiff report --sweep <out>`` tabulates and plots them.
"""

from __future__ import annotations

from jointdiff.workflow.sweep_jobs import alpha, expand, run, slurm


def main(argv: list[str]) -> None:
    from jsonargparse import CLI

    import jointdiff.data  # noqa: F401  (registers the DataModules for --data <ClassName>)

    CLI([expand, run, slurm, alpha], args=argv, as_positional=True, prog="jointdiff sweep")

