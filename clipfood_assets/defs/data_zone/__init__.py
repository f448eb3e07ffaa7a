"""The data zone: positive pairs, copied images, augmented pairs, and the checks that guard training."""
