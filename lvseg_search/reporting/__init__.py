"""Reporting: the ranked trial table, figures, the best trial's out-of-fold breakdowns,
and the Markdown, HTML and TensorBoard renderings of a run folder (``report`` verb)."""
