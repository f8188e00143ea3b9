"""tools: the commands of ``python -m duelist`` (runs aside: :mod:`duelist.runs.registry`): review, export, kaggle,
bench, footprint, plan, eda, example-data, and the tiny tokenizer's builder. The top layer."""
