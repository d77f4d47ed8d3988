"""Small helpers that actors/, learner/, rewards/ and cluster/ all use (devices, dtypes)."""
