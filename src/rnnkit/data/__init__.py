"""Data: generators and loaders that turn raw data into batches (padded tensors + lengths)."""
