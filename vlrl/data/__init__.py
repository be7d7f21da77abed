"""Datasets: reading rows through HF ``datasets``, writing synthetic sets, contact sheets, scoring predictions."""
