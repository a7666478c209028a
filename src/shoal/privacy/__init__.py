"""What protects a site's data beyond "it never leaves": secure aggregation
(``shoal.privacy.secagg``, the server learns only the sum of the updates)."""
