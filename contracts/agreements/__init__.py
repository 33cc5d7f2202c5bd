"""Standard contracts: templates, rendering, signatures."""
