"""Benchmark tasks: protocols that turn embeddings (or a backbone) into scores.

``get_task("fov-mlp")`` returns the task's config with the protocol defaults; ``list_tasks()``
names them all. Importing this package is light (torch is imported when a task runs).
"""

from ocbench.tasks.base import TaskConfig, TaskResult, get_task, list_tasks, register_task
from ocbench.tasks import fov_probe as _fov_probe  # noqa: F401  (registers fov-mlp, fov-linear)

__all__ = ["TaskConfig", "TaskResult", "get_task", "list_tasks", "register_task"]
