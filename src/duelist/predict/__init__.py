"""predict: combining runs' predictions: OOF-tuned weights, specialists' routes, the stacker. Needs the layers below."""
