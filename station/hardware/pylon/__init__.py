"""Basler cameras through pypylon: `camera.PylonCamera` (the driver, also for the pylon camera
emulator). Twin shots for the emulator to play: `station.devices.pylon_emulator`.

Import the submodules directly; pypylon loads only when a camera is opened or listed.
"""
