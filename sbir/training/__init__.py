"""Training building blocks in pure PyTorch: the per-method objective, optimiser and schedule.

The Ray Train loop in ``pipelines.train`` drives these; they are testable without Ray.
"""

from sbir.training.objective import TrainingObjective
from sbir.training.optim import build_optimizer, build_scheduler

__all__ = ["TrainingObjective", "build_optimizer", "build_scheduler"]
