"""Ray Tune sweeps over the training driver: space, trials, progress, results and finish (docs/tuning.md)."""
