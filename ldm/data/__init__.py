"""Training data: the synthetic shapes set and the webdataset shard pipeline."""
