"""`station tune`: choose a detector configuration for a product from its good images.

- `faults`: synthetic defects (scratch, speck, stain, missing texture, fold, foreign object);
- `data`: the fit / held-out split, its limits, the run digest;
- `candidates`: the configurations tried, cheapest first, and the ensemble of the best two;
- `evaluate`: fit through the station's training path, score through its scoring engine;
- `journal`: `tune.jsonl`, resumable;
- `compare`: whether one candidate beats another beyond the noise (a paired bootstrap);
- `report`: the ranking rule, `tune.md`, the histogram PNG, the recipe variant;
- `run`: the loop within the time budget.
The command is station.cli.tune; docs/tune.md describes the rules.
"""
