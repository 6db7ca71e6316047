"""Training: the typed config (`config`), one run assembled from it (`session`), the schedule that
trains the head and then fine-tunes (`schedule`), scoring under a policy (`scoring`, `metrics`), and
the run folder every later step reads (`rundir`, with typed readers of its files)."""
