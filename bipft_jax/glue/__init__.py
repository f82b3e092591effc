"""GLUE fine-tuning on the shared training machinery of `bipft_jax.train`.

- ``finetune``: `bipft finetune` (stages of a distillation chain, resumable, multi-host).
- ``init`` (stage specs, model configs, initial weights), ``teacher`` (ready KD teachers),
  ``kd`` (the fine-tuning losses), ``data`` (bucketed batches), ``eval`` (predictions, metrics,
  submissions), ``rules`` (per-paper selection and dropout rules), ``recipes`` (config defaults).
- ``sweep`` + ``table``: `bipft sweep` and its aggregate; ``study`` + ``study_table``:
  `bipft study`.
"""
