"""Measuring: the one timing loop (`timing`), benchmark, the models x variants sweep, the token-merging r sweep,
accuracy on labelled data, the recommendation, charts, tables and results files. May import `core`, `train` and
`variants`."""
