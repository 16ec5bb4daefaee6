"""Datasets: Omniglot (official zips + Vinyals split files) and sinusoid regression."""
