"""Basler cameras through pypylon: `camera.PylonCamera` (the driver, also for the pylon camera
emulator) and `emulator.prepare_twin_images` (digital-twin shots for the emulator to play).

Import the submodules directly; pypylon loads only when a camera is opened or listed.
"""
