"""Datasets and their rewards: ChartQA, TableVQA, ReFOCUS-format data, synthetic charts and tables."""
