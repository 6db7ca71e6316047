"""Results: judging a finished run and writing what is found. `evaluated` holds the images a model was
judged on with their probabilities, `evaluation` the verbs that write results, `analysis` the
statistics (intervals, curves, McNemar), `plots` the figures, `reportpage` report.html, `modelcard`
the run's README.md, and `crossval` cross-validation's folds pooled."""
