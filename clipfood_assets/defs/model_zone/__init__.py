"""The model zone: the preprocessed image store, M0, LoRA runs (M1) and sweeps of them."""
