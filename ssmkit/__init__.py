"""ssmkit."""
