"""Engine: Lightning task, metrics, optimisers/schedules, encoder-free checkpoints, evaluation.

Modules (imported on demand; nothing here imports Lightning eagerly):

- :mod:`rsprompt.engine.task` — :class:`~rsprompt.engine.task.SegmentationTask` trains any
  registered method.
- :mod:`rsprompt.engine.metrics` — OA, IoU/F1, mIoU/mF1 (ISPRS convention), seen/unseen/hIoU.
- :mod:`rsprompt.engine.optim` — parameter groups (1-D no-decay, lr multipliers), schedules.
- :mod:`rsprompt.engine.checkpoint` — ``save_model_checkpoint``/``load_model_checkpoint``/``model_meta``.
- :mod:`rsprompt.engine.callbacks` — ``model.ckpt`` on every exit, ``last.ckpt`` for resuming.
- :mod:`rsprompt.engine.evaluate` — the sliding-window protocol over whole tiles.
- :mod:`rsprompt.engine.cli_train` — the LightningCLI behind ``rsprompt train``.
- :mod:`rsprompt.engine.zeroshot` — zero-shot split helpers (RPN).
"""
