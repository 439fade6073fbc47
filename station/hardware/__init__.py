"""The real device drivers, one folder each: `ur/` (UR5 through ur_rtde) and `pylon/` (Basler
through pypylon). They implement `station.interfaces`, take their settings from their config in
`station.recipe.devices`, and are built from a recipe by `station.devices` (never by each other,
and never with the twin).
"""
