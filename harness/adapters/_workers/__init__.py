"""Worker scripts of the library adapters, run by each library's own environment."""
