"""models: the two kinds of model behind one interface (interface.py): networks (build, train, score, merge; the
head they end in: heads.py) and trees on hand-made features; kinds.py says which kind a config is. Needs core, data,
runs."""
