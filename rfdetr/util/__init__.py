"""Small helpers shared by the models, data and training code."""
