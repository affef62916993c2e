"""NumPy / plain-Python references that the production kernels and Spark jobs are tested against
(test-only: production code never imports this package)."""
