"""tasks: the jobs train.py and infer.py run (train, submit, pseudolabel, generate, translate) and the rules between
config values, checked before a job starts. Needs the layers below."""
