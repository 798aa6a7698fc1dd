"""flaxzoo.train.tasks: training tasks beyond next-token prediction, on real data.

MaskedLMTask (BERT masked-LM on Shakespeare), GenreTask (which genre a passage comes
from, on held-out plays), PronunciationTask (T5 from spelling to CMUdict phonemes),
and the loop they share: TaskRunConfig, run_task.
"""

from flaxzoo.train.tasks.encoder_tasks import GenreTask, MaskedLMTask
from flaxzoo.train.tasks.pronunciation import PronunciationTask, load_cmudict
from flaxzoo.train.tasks.runner import Task, TaskRunConfig, run_task

__all__ = ["GenreTask", "MaskedLMTask", "PronunciationTask", "Task", "TaskRunConfig",
           "load_cmudict", "run_task"]
