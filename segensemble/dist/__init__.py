"""Past one machine: Ray Data for offline work (the `dist` extra)."""
