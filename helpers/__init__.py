"""helpers: the tested code shared by the notebooks of the BERT transfer-learning course.

One short module per idea (CONTRIBUTING.md has the map): config (the profiles), runtime, io,
data, tokenization, attention, pretraining, models, heads, loop, training, inference, metrics,
domains, crosslingual, bench, plots, and the edges cli and course. Notebooks derive each idea
in the open, then use the tested helper.
"""
__version__ = "0.1.0"
