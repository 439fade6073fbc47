"""Quality over time: drift charts, image statistics and the material check."""
