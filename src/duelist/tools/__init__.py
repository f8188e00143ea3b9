"""tools: the commands of ``python -m duelist`` (review, export, kaggle, bench, eda, example-data), the Optuna
sweeper and the tiny tokenizer's builder. The top layer."""
