"""data: pairs as data: reading files of any layout into the canonical table, the training/validation split, the
token encoding of a pair, the hand-made pair features. Needs only core."""
