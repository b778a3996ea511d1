"""The embedded default model: config, training code, weights and model card."""
