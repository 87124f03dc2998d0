"""helpers: the tested code shared by the notebooks of the BERT transfer-learning course.

One short module per idea: config (profiles, seeds, results), data, models, attention,
pretraining, training, metrics, plots. Notebooks derive each idea in the open, then use
the tested helper.
"""
__version__ = "0.1.0"
