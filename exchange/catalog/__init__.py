"""The catalog: search over listed products and the published resource list (DCAT)."""
