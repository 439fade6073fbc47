"""The cell's devices built from a recipe, above both the real drivers and the twin.

`drivers` registers one builder per driver name (robot, camera, line I/O), `factory` opens a
recipe's devices (`open_devices`), `pylon_emulator` renders twin shots for the pylon camera
emulator. `station.hardware` and `station.twin` never import each other; only this package and
the layers above it see both.
"""
