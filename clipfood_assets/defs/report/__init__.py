"""The comparison report across M0 and every experiment run."""
