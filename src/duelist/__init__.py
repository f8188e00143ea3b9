"""duelist: predict which of two chatbot responses a human prefers. Layers, lowest first: core, data, runs, models,
predict, tasks, tools; a layer imports only from the layers below it."""
